package main

import (
	"os"
	"runtime/debug"
	"testing"
)

// --gc-percent applies unless the operator set GOGC.
func TestSetGCPercent(t *testing.T) {
	t.Setenv("GOGC", "") // restored, with the GC percent, when the test ends
	os.Unsetenv("GOGC")
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)

	setGCPercent(37)
	if got := debug.SetGCPercent(100); got != 37 {
		t.Errorf("without GOGC: GC percent %d, want 37", got)
	}
	t.Setenv("GOGC", "80")
	setGCPercent(37)
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("with GOGC set: GC percent changed to %d", got)
	}
}
