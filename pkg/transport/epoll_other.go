//go:build !linux

package transport

func newEpoll(Options) (Engine, error) { return nil, ErrUnsupported }
