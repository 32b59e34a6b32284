#!/usr/bin/env python3
"""Interop check of chatlog's Avro single-object encoding against fastavro, an independent
Avro implementation. Driven by tests/interop_fastavro.rs; usable by hand too.

Usage: python3 interop.py <workdir>

<workdir>/pcf_cases.json (optional) is a list of schema JSON strings; their Parsing Canonical
Form and CRC-64-AVRO fingerprint (little-endian hex) by fastavro go to <workdir>/pcf_out.json.

<workdir>/cases.json is a list of cases:
  {"name": str, "schema": path to .avsc, "record": {...}, "ours": optional path}
where "record" is the message in JSON form (content as hex in "content_hex", timestamps as
integers: send_time in milliseconds, server_time in microseconds, enums as symbols).

For every case this script
  (a) if "ours" is set: reads the single-object bytes chatlog wrote, checks the C3 01 marker and
      that the 8 fingerprint bytes equal fastavro's own CRC-64-AVRO fingerprint of the schema's
      Parsing Canonical Form (little-endian), decodes the datum with fastavro and compares every
      field with "record";
  (b) writes its own single-object bytes of "record" to <workdir>/<name>.theirs.bin, for chatlog
      to decode.
It prints one line per check and exits non-zero on the first mismatch.
"""

import datetime
import io
import json
import os
import sys

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

MAGIC = b"\xc3\x01"
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def load_schema(path):
    with open(path, encoding="utf-8") as f:
        parsed = parse_schema(json.load(f))
    pcf = to_parsing_canonical_form(parsed)
    fp_le = bytes.fromhex(fingerprint(pcf, "CRC-64-AVRO"))
    return parsed, fp_le


def to_avro_record(record):
    """JSON form -> the dict fastavro writes."""
    out = dict(record)
    out["content"] = bytes.fromhex(out.pop("content_hex"))
    return out


def from_avro_record(decoded):
    """What fastavro decoded -> JSON form (timestamps back to integers)."""
    out = dict(decoded)
    out["content_hex"] = out.pop("content").hex()
    for field, unit in (
        ("send_time", "milliseconds"),
        ("server_time", "microseconds"),
        ("mutated_at", "microseconds"),
    ):
        if field not in out:
            continue
        value = out[field]
        if isinstance(value, datetime.datetime):
            out[field] = (value - EPOCH) // datetime.timedelta(**{unit: 1})
    return out


def check_ours(case, parsed, fp_le):
    with open(case["ours"], "rb") as f:
        data = f.read()
    if data[:2] != MAGIC:
        fail(f"{case['name']}: marker {data[:2].hex()} != c301")
    if data[2:10] != fp_le:
        fail(
            f"{case['name']}: fingerprint bytes {data[2:10].hex()} != fastavro CRC-64-AVRO "
            f"{fp_le.hex()} (little-endian)"
        )
    body = io.BytesIO(data[10:])
    decoded = fastavro.schemaless_reader(body, parsed)
    rest = body.read()
    if rest:
        fail(f"{case['name']}: {len(rest)} trailing bytes after the datum")
    got = from_avro_record(decoded)
    want = case["record"]
    if got != want:
        for key in sorted(set(got) | set(want)):
            if got.get(key) != want.get(key):
                print(f"  {key}: fastavro={got.get(key)!r} expected={want.get(key)!r}", file=sys.stderr)
        fail(f"{case['name']}: decoded record differs")
    print(f"ok   decode ours   {case['name']} fingerprint={fp_le.hex()}")


def write_theirs(case, parsed, fp_le, workdir):
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(fp_le)
    fastavro.schemaless_writer(buf, parsed, to_avro_record(case["record"]))
    path = os.path.join(workdir, f"{case['name']}.theirs.bin")
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    print(f"ok   write theirs  {case['name']} ({len(buf.getvalue())} bytes)")


def main():
    if len(sys.argv) != 2:
        fail(__doc__)
    workdir = sys.argv[1]
    with open(os.path.join(workdir, "cases.json"), encoding="utf-8") as f:
        cases = json.load(f)
    print(f"fastavro {fastavro.__version__}")
    pcf_cases = os.path.join(workdir, "pcf_cases.json")
    if os.path.exists(pcf_cases):
        with open(pcf_cases, encoding="utf-8") as f:
            schemas = json.load(f)
        out = []
        for text in schemas:
            pcf = to_parsing_canonical_form(parse_schema(json.loads(text)))
            out.append({"pcf": pcf, "fingerprint": fingerprint(pcf, "CRC-64-AVRO")})
        with open(os.path.join(workdir, "pcf_out.json"), "w", encoding="utf-8") as f:
            json.dump(out, f)
        print(f"ok   canonical     {len(out)} schemas")
    for case in cases:
        parsed, fp_le = load_schema(case["schema"])
        if case.get("ours"):
            check_ours(case, parsed, fp_le)
        write_theirs(case, parsed, fp_le, workdir)


if __name__ == "__main__":
    main()
