// The Java Kafka client's default partition for keyed records (BuiltInPartitioner.partitionForKey):
// toPositive(murmur2(keyBytes)) % numPartitions. tests/producer.rs runs this with the real
// kafka-clients jar to check that chatlog's producer (librdkafka, partitioner=murmur2_random)
// puts every session on the partition a Java producer would.
//
//   java -cp "$CHATLOG_KAFKA_LIB/*" tests/java/Murmur2Partition.java <partitions> < keys.txt
//
// Keys are read from stdin, one per line, as UTF-8 (argv decoding depends on the locale); one
// partition per line is printed.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import org.apache.kafka.common.utils.Utils;

public class Murmur2Partition {
    public static void main(String[] args) throws Exception {
        int partitions = Integer.parseInt(args[0]);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String key;
        while ((key = in.readLine()) != null) {
            byte[] bytes = key.getBytes(StandardCharsets.UTF_8);
            System.out.println(Utils.toPositive(Utils.murmur2(bytes)) % partitions);
        }
    }
}
