//go:build unix

package sqlite

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockDir takes an exclusive flock on dataDir's lock file for as long as
// the returned file stays open; the kernel drops it when the process dies,
// so a crash never leaves the directory locked. One writer per file is
// what the embedded store's group commit assumes, and what lets it answer
// "nothing unread" from memory (recipients): a second node on the same
// directory would store messages this one never hears of.
func lockDir(dataDir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dataDir, LockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrInUse, dataDir)
		}
		return nil, fmt.Errorf("sqlite: lock %s: %w", dataDir, err)
	}
	return f, nil
}
