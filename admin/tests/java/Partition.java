// The partition the Java client's partitioner gives each key of a keyed record:
// BuiltInPartitioner.partitionForKey = Utils.toPositive(Utils.murmur2(key)) % partitions.
// Keys are passed in hex (their bytes, e.g. UTF-8), so no locale can change them on the way.
//   java -cp "$CHATLOG_KAFKA_LIB/*" Partition.java <partitions> <hex key>...
// Prints one line per key: the partition.
import java.util.HexFormat;
import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;

public class Partition {
    public static void main(String[] args) {
        int partitions = Integer.parseInt(args[0]);
        for (int i = 1; i < args.length; i++) {
            byte[] key = HexFormat.of().parseHex(args[i]);
            System.out.println(BuiltInPartitioner.partitionForKey(key, partitions));
        }
    }
}
