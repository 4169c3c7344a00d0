//go:build linux

// Package rawsys makes the syscalls of an event loop's turn (read, write,
// writev, epoll_ctl and a zero-timeout epoll_wait) without the runtime's
// syscall bookkeeping. They are made on non-blocking fds or with no
// timeout and return within microseconds, so entersyscall/exitsyscall buy
// nothing; and on a quiet process sysmon sleeps, and the first ordinary
// syscall after every wake-up woke it with a futex: 4.6 % of a connect's
// CPU in the profile of bench/results/20261201-213938-connect. The server's
// epoll engine (pkg/transport) and the bench's generator share them.
//
// Every call retries EINTR itself. None may be used on a blocking fd: a
// raw syscall that blocks holds its thread and P out of the scheduler's
// sight, and stalls a stop-the-world until it returns.
package rawsys

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

var zeroByte byte // read(2) wants a valid pointer even for no bytes

// Read is read(2).
func Read(fd int, b []byte) (int, error) {
	p := unsafe.Pointer(&zeroByte)
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	return call(unix.SYS_READ, uintptr(fd), uintptr(p), uintptr(len(b)), 0)
}

// Write is write(2); b must not be empty.
func Write(fd int, b []byte) (int, error) {
	return call(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0)
}

// Writev is writev(2); iov must not be empty.
func Writev(fd int, iov []unix.Iovec) (int, error) {
	return call(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)), 0)
}

// EpollCtl is epoll_ctl(2).
func EpollCtl(epfd, op, fd int, ev *unix.EpollEvent) error {
	_, err := call(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)))
	return err
}

// EpollReady takes the events ready now, without waiting: epoll_pwait
// with a zero timeout and no signal mask, which every Linux architecture
// has. evs must not be empty.
func EpollReady(epfd int, evs []unix.EpollEvent) (int, error) {
	return call(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&evs[0])), uintptr(len(evs)), 0)
}

// call makes a syscall of at most four arguments, retrying EINTR.
func call(trap, a1, a2, a3, a4 uintptr) (int, error) {
	for {
		r, _, errno := unix.RawSyscall6(trap, a1, a2, a3, a4, 0, 0)
		switch errno {
		case 0:
			return int(r), nil
		case unix.EINTR:
			continue
		}
		return 0, errno
	}
}
