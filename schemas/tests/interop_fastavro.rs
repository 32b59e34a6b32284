//! Interop with an independent Avro implementation: Python `fastavro` (`tests/interop.py`).
//!
//! (a) fastavro decodes the single-object bytes we write, after checking the marker and that the
//! header fingerprint equals its own CRC-64-AVRO fingerprint of the schema; (b) we decode the
//! single-object bytes fastavro writes (v1, v2, and a newer schema with an extra `ContentType`
//! symbol), and for v1 they must be byte-identical to ours.
//!
//! Requires `python3` with fastavro (`python3 -m pip install fastavro`); the test fails, never
//! skips, when they are missing. Set `PYTHON` to use another interpreter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use chatlog_schemas::testing::schema_v2_with_content_type;
use chatlog_schemas::{
    ChatMessage, ChatMessageV2, Codec, ContentType, MessageState, SCHEMA_V1_JSON, SCHEMA_V2_JSON,
    SCHEMA_V3_JSON, SessionType, parsing_canonical_form, schema_fingerprint,
};
use serde_json::{Value as Json, json};

const INSTALL_HINT: &str = "the fastavro interop test needs python3 with fastavro: run \
                            `python3 -m pip install fastavro` (or set PYTHON to an interpreter \
                            that has it)";

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require_fastavro() {
    let py = python();
    match Command::new(&py)
        .args(["-c", "import fastavro; print(fastavro.__version__)"])
        .output()
    {
        Err(e) => panic!("cannot run `{py}`: {e}. {INSTALL_HINT}"),
        Ok(out) if !out.status.success() => panic!(
            "`{py}` cannot import fastavro ({}). {INSTALL_HINT}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(_) => {}
    }
}

fn message(i: i64, content_type: ContentType, content: &[u8], ext: &[(&str, &str)]) -> ChatMessage {
    ChatMessage {
        msg_id: format!("0190a6b2-7c3e-7d4f-8a9b-0c1d2e3f4a{i:02}"),
        client_msg_id: format!("client-{i}"),
        session_id: format!("s:{i}:ünïcødé-会话"),
        session_type: SessionType::ALL[(i % 3) as usize],
        seq: i * 1_000_003 + 1,
        sender_id: format!("u-{i}"),
        content_type,
        content: content.to_vec(),
        send_time_ms: 1_732_590_000_123 + i,
        server_time_us: 1_732_590_000_125_456 + i,
        ext: ext
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        state: Default::default(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The JSON form `interop.py` expects.
fn record_json(m: &ChatMessage, content_type_symbol: &str) -> serde_json::Map<String, Json> {
    let Json::Object(o) = json!({
        "msg_id": m.msg_id,
        "client_msg_id": m.client_msg_id,
        "session_id": m.session_id,
        "session_type": m.session_type.symbol(),
        "seq": m.seq,
        "sender_id": m.sender_id,
        "content_type": content_type_symbol,
        "content_hex": hex(&m.content),
        "send_time": m.send_time_ms,
        "server_time": m.server_time_us,
        "ext": m.ext,
    }) else {
        unreachable!()
    };
    o
}

/// Schemas whose canonical form is compared with fastavro's.
fn pcf_schemas(v3_path: &Path) -> Vec<String> {
    let mut v = vec![
        SCHEMA_V1_JSON.to_owned(),
        SCHEMA_V2_JSON.to_owned(),
        SCHEMA_V3_JSON.to_owned(),
        std::fs::read_to_string(v3_path).unwrap(),
    ];
    v.extend(
        [
            r#""null""#,
            r#"{"type": "long", "logicalType": "timestamp-micros"}"#,
            r#"{"type": "array", "items": {"type": "int", "logicalType": "date"}}"#,
            r#"{"type": "map", "values": ["null", "double", {"type": "string", "logicalType": "uuid"}]}"#,
            r#"{"type": "fixed", "name": "D", "namespace": "n.s", "size": 12, "logicalType": "duration"}"#,
            r#"{"type": "record", "name": "Outer", "namespace": "a.b", "doc": "d", "fields": [
                {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X", "Y"], "default": "X"}},
                {"name": "e2", "type": "E", "default": "Y"},
                {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
                {"name": "inner", "type": {"type": "record", "name": "c.Inner", "fields": [
                    {"name": "f", "type": {"type": "fixed", "name": "F", "size": 4}},
                    {"name": "f2", "type": ["null", "F"]}]}},
                {"name": "next", "type": ["null", "Outer"], "default": null}
            ]}"#,
        ]
        .map(str::to_owned),
    );
    v
}

fn write(path: &Path, data: impl AsRef<[u8]>) {
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[test]
fn fastavro_reads_ours_and_we_read_fastavro() {
    require_fastavro();
    let dir = std::env::temp_dir().join(format!("chatlog-schemas-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let v1_path = schemas_dir().join("chat_message.avsc");
    let v2_path = schemas_dir().join("chat_message_v2.avsc");
    let v3_path = dir.join("chat_message_v3_like.avsc");
    let v3_json = serde_json::to_string_pretty(&schema_v2_with_content_type("LOCATION")).unwrap();
    write(&v3_path, &v3_json);

    let codec = Codec::builder().writer_schema(v3_json).build().unwrap();

    let v1_messages = [
        message(1, ContentType::Text, "hello, 世界".as_bytes(), &[]),
        message(
            2,
            ContentType::Image,
            &[0, 1, 2, 0xfe, 0xff],
            &[("w", "640"), ("h", "480"), ("mime", "image/png")],
        ),
        message(3, ContentType::Unknown, &[], &[("", "")]),
        message(4, ContentType::Custom, &[0xab; 3000], &[("k", "v")]),
    ];
    let v2_message = ChatMessageV2 {
        message: message(5, ContentType::Voice, b"opus", &[("dur_ms", "1200")]),
        reply_to_seq: Some(4_000_013),
        edited: true,
    };
    let v3_message = message(6, ContentType::Unknown, b"{\"lat\":1.5}", &[]);
    // Schema v3 as shipped: an edited and a recalled message.
    let edited = {
        let m = message(7, ContentType::Text, "edited, 二".as_bytes(), &[("k", "v")]);
        ChatMessage {
            state: MessageState::Edited {
                at_us: m.server_time_us + 5_000_000,
                count: 3,
                by: m.sender_id.clone(),
            },
            ..m
        }
    };
    let recalled = {
        let m = message(8, ContentType::Image, &[], &[]);
        ChatMessage {
            state: MessageState::Recalled {
                at_us: m.server_time_us + 1,
                by: "moderator-1".into(),
            },
            ..m
        }
    };
    let mutated = [("v3_edited", &edited), ("v3_recalled", &recalled)];

    let mut cases = Vec::new();
    let mut ours = BTreeMap::new();
    for (i, m) in v1_messages.iter().enumerate() {
        let name = format!("v1_{i}");
        let bytes = codec.encode(m).unwrap();
        let path = dir.join(format!("{name}.ours.bin"));
        write(&path, &bytes);
        ours.insert(name.clone(), bytes);
        cases.push(json!({
            "name": name,
            "schema": v1_path,
            "record": record_json(m, m.content_type.symbol()),
            "ours": path,
        }));
    }
    {
        let bytes = codec.encode_v2(&v2_message).unwrap();
        let path = dir.join("v2.ours.bin");
        write(&path, &bytes);
        let mut record = record_json(
            &v2_message.message,
            v2_message.message.content_type.symbol(),
        );
        record.insert("reply_to_seq".into(), json!(v2_message.reply_to_seq));
        record.insert("edited".into(), json!(v2_message.edited));
        cases.push(json!({ "name": "v2", "schema": v2_path, "record": record, "ours": path }));
    }
    {
        let mut record = record_json(&v3_message, "LOCATION");
        record.insert("reply_to_seq".into(), Json::Null);
        record.insert("edited".into(), json!(false));
        cases.push(json!({ "name": "v3_like", "schema": v3_path, "record": record }));
    }
    for (name, m) in mutated {
        let bytes = codec.encode(m).unwrap();
        let path = dir.join(format!("{name}.ours.bin"));
        write(&path, &bytes);
        ours.insert(name.to_owned(), bytes);
        let mut record = record_json(m, m.content_type.symbol());
        record.insert("reply_to_seq".into(), Json::Null);
        record.insert(
            "edited".into(),
            json!(matches!(m.state, MessageState::Edited { .. })),
        );
        record.insert("state".into(), json!(m.state.symbol()));
        record.insert("mutated_at".into(), json!(m.state.mutated_at_us()));
        record.insert("mutated_by".into(), json!(m.state.mutated_by()));
        record.insert("edit_count".into(), json!(m.state.edit_count()));
        cases.push(json!({
            "name": name,
            "schema": schemas_dir().join("chat_message_v3.avsc"),
            "record": record,
            "ours": path,
        }));
    }
    write(
        &dir.join("cases.json"),
        serde_json::to_vec_pretty(&cases).unwrap(),
    );
    let pcf_schemas = pcf_schemas(&v3_path);
    write(
        &dir.join("pcf_cases.json"),
        serde_json::to_vec(&pcf_schemas).unwrap(),
    );

    let script = schemas_dir().join("tests").join("interop.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}. {INSTALL_HINT}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "interop.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    // Our Parsing Canonical Form and fingerprint agree with fastavro's.
    let pcf_out: Vec<Json> =
        serde_json::from_slice(&std::fs::read(dir.join("pcf_out.json")).unwrap()).unwrap();
    assert_eq!(pcf_out.len(), pcf_schemas.len());
    for (schema, theirs) in pcf_schemas.iter().zip(&pcf_out) {
        let ours = parsing_canonical_form(schema).unwrap();
        assert_eq!(
            ours,
            theirs["pcf"].as_str().unwrap(),
            "canonical form of {schema}"
        );
        let fp = schema_fingerprint(schema).unwrap();
        assert_eq!(
            hex(&fp.to_le_bytes()),
            theirs["fingerprint"].as_str().unwrap()
        );
    }

    let theirs = |name: &str| {
        let path = dir.join(format!("{name}.theirs.bin"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    };
    for (i, m) in v1_messages.iter().enumerate() {
        let name = format!("v1_{i}");
        let bytes = theirs(&name);
        assert_eq!(codec.decode(&bytes).unwrap(), *m, "{name}");
        assert_eq!(
            bytes, ours[&name],
            "{name}: fastavro bytes differ from ours"
        );
    }
    let bytes = theirs("v2");
    assert_eq!(codec.decode_as_v2(&bytes).unwrap(), v2_message);
    assert_eq!(codec.decode(&bytes).unwrap(), v2_message.message);
    for (name, m) in mutated {
        let bytes = theirs(name);
        assert_eq!(codec.decode(&bytes).unwrap(), *m, "{name}");
        assert_eq!(bytes, ours[name], "{name}: fastavro bytes differ from ours");
    }
    let bytes = theirs("v3_like");
    // LOCATION is not a v1 symbol: the enum default of the reader schema applies.
    assert_eq!(codec.decode(&bytes).unwrap(), v3_message);

    std::fs::remove_dir_all(&dir).ok();
}
