// P3's reference (chatlog-bench, benches/src/produce.rs): Kafka's Java producer fed like chatlog's
// producer — the same keys (session ids, round-robin over the same sessions), the same payloads
// (chatlog's own encoded records, read from a file) and the same settings (acks=all, idempotence,
// lz4, linger 5 ms). ProducerPerformance cannot send keys, and keys change the batching.
//
// Launched as a single-file program: java -cp "$CHATLOG_KAFKA_LIB/*" KeyedProducerPerf.java \
//   <bootstrap> <topic> <records> <warm-up records> <records file>
// The records file holds [u32 key length][key][u32 value length][value] (big endian), repeated;
// record i is entry i % entries. The JVM's start-up (compiling this file, loading the client) and
// the warm-up (one record per session, like chatlog's producer) are outside the timed window:
// the program prints one JSON line with the window's seconds and the process's CPU over it.

import java.io.DataInputStream;
import java.io.BufferedInputStream;
import java.io.EOFException;
import java.io.FileInputStream;
import java.lang.management.ManagementFactory;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;

public class KeyedProducerPerf {
    static long cpuNanos() {
        return ((com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean())
            .getProcessCpuTime();
    }

    public static void main(String[] args) throws Exception {
        long jvmStart = ManagementFactory.getRuntimeMXBean().getStartTime();
        String bootstrap = args[0];
        String topic = args[1];
        long records = Long.parseLong(args[2]);
        long warmup = Long.parseLong(args[3]);
        List<byte[]> keys = new ArrayList<>();
        List<byte[]> values = new ArrayList<>();
        try (DataInputStream in = new DataInputStream(new BufferedInputStream(new FileInputStream(args[4])))) {
            while (true) {
                int kl;
                try {
                    kl = in.readInt();
                } catch (EOFException e) {
                    break;
                }
                byte[] k = new byte[kl];
                in.readFully(k);
                byte[] v = new byte[in.readInt()];
                in.readFully(v);
                keys.add(k);
                values.add(v);
            }
        }
        int entries = keys.size();
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("acks", "all");
        p.put("enable.idempotence", "true");
        p.put("compression.type", "lz4");
        p.put("linger.ms", "5");
        p.put("key.serializer", "org.apache.kafka.common.serialization.ByteArraySerializer");
        p.put("value.serializer", "org.apache.kafka.common.serialization.ByteArraySerializer");
        AtomicLong errors = new AtomicLong();
        AtomicLong latencyNanos = new AtomicLong();
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p)) {
            for (long i = 0; i < warmup; i++) {
                int e = (int) (i % entries);
                producer.send(new ProducerRecord<>(topic, keys.get(e), values.get(e))).get();
            }
            long cpu0 = cpuNanos();
            long t0 = System.nanoTime();
            for (long i = 0; i < records; i++) {
                int e = (int) ((warmup + i) % entries);
                long sent = System.nanoTime();
                producer.send(new ProducerRecord<>(topic, keys.get(e), values.get(e)), (md, ex) -> {
                    latencyNanos.addAndGet(System.nanoTime() - sent);
                    if (ex != null && errors.incrementAndGet() <= 3) {
                        System.err.println("send failed: " + ex);
                    }
                });
            }
            producer.flush();
            long t1 = System.nanoTime();
            long cpu1 = cpuNanos();
            double seconds = (t1 - t0) / 1e9;
            System.out.printf(
                "{\"records\":%d,\"seconds\":%.6f,\"records_per_s\":%.1f,\"avg_latency_ms\":%.3f,"
                    + "\"cpu_seconds\":%.6f,\"cpu_seconds_before_window\":%.6f,"
                    + "\"seconds_before_window\":%.3f,\"entries\":%d,\"errors\":%d}%n",
                records, seconds, records / seconds, latencyNanos.get() / 1e6 / Math.max(1, records),
                (cpu1 - cpu0) / 1e9, cpu0 / 1e9, (System.currentTimeMillis() - jvmStart) / 1e3 - seconds,
                entries, errors.get());
        }
    }
}
