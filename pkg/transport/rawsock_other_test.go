//go:build !linux

package transport

import (
	"errors"
	"net"
)

func rawDial(*net.TCPAddr) (int, error) { return -1, errors.New("raw sockets: linux only") }

func rawClose(int) {}
