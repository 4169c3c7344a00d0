package server

import "sync"

// Limits caps concurrent connections per user and per source address, so
// one account or one host cannot take a node's file descriptors.
type Limits struct {
	PerUser int // 0: unlimited
	PerIP   int // 0: unlimited

	mu    sync.Mutex
	users map[string]int // guarded by mu
	ips   map[string]int // guarded by mu
}

func (l *Limits) acquire(user, ip string) (release func(), reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.users == nil {
		l.users, l.ips = make(map[string]int), make(map[string]int)
	}
	if l.PerUser > 0 && l.users[user] >= l.PerUser {
		return nil, "too many connections for user"
	}
	if l.PerIP > 0 && l.ips[ip] >= l.PerIP {
		return nil, "too many connections from address"
	}
	// Count only what is limited: an idle connection should not pay for
	// map entries nobody reads.
	if l.PerUser > 0 {
		l.users[user]++
	}
	if l.PerIP > 0 {
		l.ips[ip]++
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.PerUser > 0 {
				dec(l.users, user)
			}
			if l.PerIP > 0 {
				dec(l.ips, ip)
			}
		})
	}, ""
}

func dec(m map[string]int, k string) {
	if m[k] <= 1 {
		delete(m, k)
	} else {
		m[k]--
	}
}
