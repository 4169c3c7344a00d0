package redisbus

import "testing"

func TestCRC16(t *testing.T) {
	// Values from the Redis Cluster specification and CLUSTER KEYSLOT.
	for s, want := range map[string]uint16{"123456789": 0x31C3, "foo": 12182, "bar": 5061} {
		if got := crc16(s); got%slots != want%slots {
			t.Errorf("slot(%q) = %d, want %d", s, got%slots, want%slots)
		}
	}
}

// Partition tags land in evenly spaced slot ranges, so three primaries
// each own about a third of the partitions.
func TestPartitionTagsSpread(t *testing.T) {
	tags := partitionTags(16)
	perPrimary := [3]int{}
	for i, tag := range tags {
		s := int(crc16(tag[1:len(tag)-1]) % slots)
		if s < i*slots/16 || s >= (i+1)*slots/16 {
			t.Fatalf("tag %s slot %d outside range %d", tag, s, i)
		}
		perPrimary[min(s*3/slots, 2)]++
	}
	for _, n := range perPrimary {
		if n < 5 || n > 6 {
			t.Fatalf("partitions per primary %v", perPrimary)
		}
	}
	k := newKeyspace("elchat:", true, 16)
	if top, ok := k.topicOf(k.topicChan("chat:1:2")); !ok || top != "chat:1:2" {
		t.Fatalf("topicOf(topicChan) = %q %v", top, ok)
	}
}
