package redisbus

import (
	"hash/fnv"
	"strconv"
	"strings"
)

// keyspace names every key and channel. On one Redis server (or a
// Sentinel-managed primary) the names are the documented ones. On Redis
// Cluster every per-topic key and channel carries the hash tag of the
// topic's partition, so that a topic's presence keys, its node index and
// its sharded channel share one slot (each presence script touches one
// slot, and may SPUBLISH there), and the node-wide keys share the tag
// {n}.
type keyspace struct {
	prefix  string
	cluster bool
	tags    []string // cluster only: the hash tag of each partition, braces included
}

// defaultPartitions is how many partitions a cluster's topics are spread
// over: a node holds one sharded pub/sub connection per partition.
const defaultPartitions = 16

func newKeyspace(prefix string, cluster bool, partitions int) keyspace {
	k := keyspace{prefix: prefix, cluster: cluster}
	if cluster {
		k.tags = partitionTags(partitions)
	}
	return k
}

// partitionTags returns n hash tags whose slots fall in n evenly spaced
// ranges of the 16384 slots: consecutive tags such as {0}, {1}, … hash to
// slots that may all sit on one primary (centrifuge #554), while these
// spread over the primaries as evenly as the slot ranges do.
func partitionTags(n int) []string {
	tags := make([]string, n)
	for i := range tags {
		lo, hi := i*slots/n, (i+1)*slots/n
		for j := 0; ; j++ {
			t := "p" + strconv.Itoa(i) + "." + strconv.Itoa(j)
			if s := int(crc16(t) % slots); s >= lo && s < hi {
				tags[i] = "{" + t + "}"
				break
			}
		}
	}
	return tags
}

const slots = 16384

// crc16 is CRC-16/XMODEM, the hash Redis Cluster maps keys to slots with.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// partition returns the partition of topic (0 on a single server).
func (k *keyspace) partition(topic string) int {
	if !k.cluster {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(topic))
	return int(h.Sum32() % uint32(len(k.tags)))
}

func (k *keyspace) tag(topic string) string {
	if !k.cluster {
		return ""
	}
	return k.tags[k.partition(topic)]
}

// topicChan is topic's fanout channel.
func (k *keyspace) topicChan(topic string) string { return k.prefix + "t:" + k.tag(topic) + topic }

// topicOf returns the topic of a fanout channel.
func (k *keyspace) topicOf(channel string) (string, bool) {
	rest, ok := strings.CutPrefix(channel, k.prefix+"t:")
	if !ok || !k.cluster {
		return rest, ok
	}
	if !strings.HasPrefix(rest, "{") {
		return "", false
	}
	i := strings.IndexByte(rest, '}')
	if i < 0 {
		return "", false
	}
	return rest[i+1:], true
}

func (k *keyspace) presence(topic string) string {
	return k.prefix + "presence:" + k.tag(topic) + topic
}
func (k *keyspace) pcount(topic string) string { return k.prefix + "pcount:" + k.tag(topic) + topic }

// nodeIndex is node id's index of entries: one set on a single server,
// one per partition on a cluster.
func (k *keyspace) nodeIndex(id string, part int) string {
	if !k.cluster {
		return k.prefix + "node:" + id + ":presence"
	}
	return k.prefix + "node:" + id + ":presence:" + k.tags[part]
}

func (k *keyspace) sweepSet(id string, part int) string {
	if !k.cluster {
		return k.prefix + "sweep:" + id
	}
	return k.prefix + "sweep:" + id + ":" + k.tags[part]
}

func (k *keyspace) node(name string) string {
	if !k.cluster {
		return k.prefix + name
	}
	return k.prefix + "{n}" + name
}

func (k *keyspace) nodes() string    { return k.node("nodes") }
func (k *keyspace) sweeping() string { return k.node("sweeping") }

// online and last_seen are read by other programs with plain commands and
// keep their names everywhere; on a cluster they are updated apart from
// the presence scripts.
func (k *keyspace) online(user string) string { return k.prefix + "online:" + user }
func (k *keyspace) lastSeen() string          { return k.prefix + "last_seen" }

// partitions is how many index sets a node has.
func (k *keyspace) partitions() int {
	if !k.cluster {
		return 1
	}
	return len(k.tags)
}

// partitionTopicPrefix is what every channel of partition part starts
// with (cluster only).
func (k *keyspace) canary(id string, part int) string {
	if !k.cluster {
		return k.prefix + "canary:" + id
	}
	return k.prefix + "canary:" + k.tags[part] + id
}
