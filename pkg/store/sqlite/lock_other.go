//go:build !unix

package sqlite

import "os"

// lockDir takes no lock off Unix: run one node per data directory there.
func lockDir(string) (*os.File, error) { return nil, nil }
