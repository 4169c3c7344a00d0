package transport

import (
	"testing"
	"unsafe"
)

// TestConnReaperBlock keeps the layout the reaper's cost depends on: the
// fields a pass reads lie in the first 32 bytes of a Conn, and a Conn
// stays in the 224-byte size class, whose objects start 32-byte aligned,
// so the block is always within one cache line. The neighbouring classes
// (208 and 240 bytes) are only 16-byte aligned: a Conn that grows or
// shrinks into one breaks that, so make room elsewhere or pick the block's
// place anew.
func TestConnReaperBlock(t *testing.T) {
	var c Conn
	for name, end := range map[string]uintptr{
		"lastRecv": unsafe.Offsetof(c.lastRecv) + unsafe.Sizeof(c.lastRecv),
		"closeAt":  unsafe.Offsetof(c.closeAt) + unsafe.Sizeof(c.closeAt),
		"stallAt":  unsafe.Offsetof(c.stallAt) + unsafe.Sizeof(c.stallAt),
		"flags":    unsafe.Offsetof(c.flags) + unsafe.Sizeof(c.flags),
	} {
		if end > 32 {
			t.Errorf("Conn.%s ends at byte %d, outside the first 32", name, end)
		}
	}
	if size := unsafe.Sizeof(c); size <= 208 || size > 224 {
		t.Errorf("Conn is %d bytes: outside the 224-byte size class (209-224), Conns are no longer 32-byte aligned", size)
	}
}
