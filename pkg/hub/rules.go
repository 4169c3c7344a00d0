package hub

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/elchat/elchat/pkg/closecode"
	"github.com/elchat/elchat/pkg/phx"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/topic"
)

// Who may talk to whom: chat grants, blocks and bans. None of them costs a
// store round trip per message. Blocks are cached per node by blocker,
// filled at chat and lobby joins; bans are all held in memory, loaded from
// the store at start and every BanRefresh. A change is written to the store
// first, then announced to the other nodes on the control topic, an
// internal topic no client can join: every node drops its cached entry (a
// block) or applies it (a ban) at once.

// controlTopic carries node-to-node announcements over the Bus. topic.Parse
// refuses it, so no client can join it and no host event can target it.
const controlTopic = "elchat:control"

// Control events.
const (
	ctlBlock = "block" // {"user": blocker}: drop the cached blocks of user
	ctlBan   = "ban"   // a store.Ban: refuse user, close their sockets
	ctlUnban = "unban" // {"user": user}
)

// maxCachedBlockers bounds the block cache and the opened-chat cache; past
// it an eighth of the entries, picked at random, are dropped.
const maxCachedBlockers = 1 << 18

// DefaultBanRefresh is how often the ban list is read again from the store.
const DefaultBanRefresh = 30 * time.Second

// GrantVerifier checks a chat grant: a token the host app signed that lets
// user open the chat with peer.
type GrantVerifier interface {
	VerifyGrant(token string) (user, peer string, err error)
}

// ErrBadUser refuses a block or ban of an id that is no user's.
var ErrBadUser = errors.New("user_id must be a valid user id other than your own")

// rules is the hub's in-memory view of blocks, bans and opened chats. Its
// lock is a leaf: it is taken under Client.mu and shard.mu, and nothing is
// called with it held.
type rules struct {
	mu sync.RWMutex
	// gen counts invalidations, so a load that raced one is not cached.
	gen uint64 // guarded by mu
	// blocks maps a blocker to whom they block; nil for nobody (most
	// users), so a cached user costs its key only.
	blocks  map[string]map[string]struct{} // guarded by mu
	loading map[string]bool                // background loads in flight; guarded by mu
	bans    map[string]store.Ban           // guarded by mu
	opened  map[string]struct{}            // chats opened by a grant; guarded by mu
}

func (r *rules) init() {
	r.blocks = make(map[string]map[string]struct{})
	r.loading = make(map[string]bool)
	r.bans = make(map[string]store.Ban)
	r.opened = make(map[string]struct{})
}

// blocked reports whether blocker blocks blocked, and whether the cache
// knows blocker at all.
func (r *rules) blocked(blocker, blocked string) (yes, known bool) {
	r.mu.RLock()
	set, known := r.blocks[blocker]
	_, yes = set[blocked]
	r.mu.RUnlock()
	return yes, known
}

// silenced reports whether either user of a chat blocks the other, from
// the cache alone; known is false when a user's blocks are not cached.
func (r *rules) silenced(a, b string) (yes, known bool) {
	r.mu.RLock()
	sa, ka := r.blocks[a]
	sb, kb := r.blocks[b]
	r.mu.RUnlock()
	_, ab := sa[b]
	_, ba := sb[a]
	return ab || ba, ka && kb
}

// loadLater reads the blocks of the users of t that are not cached, in the
// background: for paths that must not wait on the store.
func (h *Hub) loadLater(t topic.Topic) {
	for _, u := range [...]string{t.A, t.B} {
		r := &h.rules
		r.mu.Lock()
		_, known := r.blocks[u]
		start := !known && !r.loading[u]
		if start {
			r.loading[u] = true
		}
		r.mu.Unlock()
		if !start {
			continue
		}
		go func() {
			ctx, cancel := h.ctx()
			defer cancel()
			if _, err := h.loadBlocks(ctx, u); err != nil {
				h.cfg.Logger.Warn("could not load blocks", "user", u, "err", err)
			}
			r.mu.Lock()
			delete(r.loading, u)
			r.mu.Unlock()
		}()
	}
}

// evictLocked drops an eighth of m's entries, picked by map order (random),
// once m holds maxCachedBlockers; the caller holds r.mu.
func evictLocked[V any](m map[string]V) {
	if len(m) < maxCachedBlockers {
		return
	}
	n := len(m) / 8
	for k := range m {
		if n--; n < 0 {
			break
		}
		delete(m, k)
	}
}

// dropBlocks forgets blocker's cached blocks and reports whether there
// were any.
func (r *rules) dropBlocks(blocker string) bool {
	r.mu.Lock()
	r.gen++
	_, had := r.blocks[blocker]
	delete(r.blocks, blocker)
	r.mu.Unlock()
	return had
}

// refreshBlocks drops blocker's cached blocks and, if this node had them,
// reads them again in the background: typing and presence consult the
// cache only (they may not wait on the store), so the entry must come back
// before the next keystroke, not at the next message.
func (h *Hub) refreshBlocks(blocker string) {
	if !h.rules.dropBlocks(blocker) {
		return
	}
	go func() {
		ctx, cancel := h.ctx()
		defer cancel()
		if _, err := h.loadBlocks(ctx, blocker); err != nil {
			h.cfg.Logger.Warn("could not reload blocks", "user", blocker, "err", err)
		}
	}()
}

func (r *rules) resetBlocks() {
	r.mu.Lock()
	r.gen++
	clear(r.blocks)
	r.mu.Unlock()
}

// loadBlocks reads blocker's blocks from the store into the cache and
// returns them. A load that overlapped an invalidation is returned but not
// cached.
func (h *Hub) loadBlocks(ctx context.Context, blocker string) (map[string]struct{}, error) {
	r := &h.rules
	r.mu.RLock()
	gen := r.gen
	r.mu.RUnlock()
	list, err := h.cfg.Store.Blocks(ctx, blocker)
	if err != nil {
		return nil, err
	}
	var set map[string]struct{}
	if len(list) > 0 {
		set = make(map[string]struct{}, len(list))
		for _, b := range list {
			set[b] = struct{}{}
		}
	}
	r.mu.Lock()
	if r.gen == gen {
		evictLocked(r.blocks)
		r.blocks[blocker] = set
	}
	r.mu.Unlock()
	return set, nil
}

// isBlocked reports whether blocker blocks blocked: from memory, or once
// per blocker and node from the store.
func (h *Hub) isBlocked(blocker, blocked string) (bool, error) {
	if yes, known := h.rules.blocked(blocker, blocked); known {
		return yes, nil
	}
	ctx, cancel := h.ctx()
	defer cancel()
	set, err := h.loadBlocks(ctx, blocker)
	if err != nil {
		return false, err
	}
	_, yes := set[blocked]
	return yes, nil
}

// blockReason is why a message from sender in chat t is refused, or "".
// It costs two map lookups once both users' blocks are cached (a chat
// join caches them).
func (h *Hub) blockReason(t topic.Topic, sender string) (string, error) {
	other := t.Other(sender)
	if yes, err := h.isBlocked(other, sender); err != nil || yes {
		return "blocked by the recipient", err
	}
	if yes, err := h.isBlocked(sender, other); err != nil || yes {
		return "you have blocked this user", err
	}
	return "", nil
}

// blockReasonLocal is blockReason from the cache alone; known is false
// when either user's blocks are not cached (the event loop then hands the
// message to the stage).
func (h *Hub) blockReasonLocal(t topic.Topic, sender string) (reason string, known bool) {
	other := t.Other(sender)
	yes, k1 := h.rules.blocked(other, sender)
	if k1 && yes {
		return "blocked by the recipient", true
	}
	yes2, k2 := h.rules.blocked(sender, other)
	if k2 && yes2 {
		return "you have blocked this user", true
	}
	return "", k1 && k2
}

// SetBlock makes blocker block (on) or unblock blocked, durably and on
// every node at once.
func (h *Hub) SetBlock(blocker, blocked string, on bool) error {
	if topic.ValidID(blocker) != nil || topic.ValidID(blocked) != nil || blocker == blocked {
		return &InputError{ErrBadUser.Error()}
	}
	ctx, cancel := h.ctx()
	defer cancel()
	if err := h.cfg.Store.SetBlock(ctx, blocker, blocked, on); err != nil {
		return err
	}
	h.refreshBlocks(blocker)
	h.announce(ctlBlock, map[string]string{"user": blocker})
	return nil
}

// blockEvent handles block {user_id} and unblock {user_id} in the user's
// lobby, on the request stage.
func (c *Client) blockEvent(f *phx.Frame) {
	ch, ok := c.channel(f)
	if !ok {
		return
	}
	if ch.topic.Kind != topic.Lobby {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "unknown event")
		return
	}
	// user_id is a string; a number is taken as its decimal form, as
	// clients holding numeric ids send them.
	var p struct {
		UserID json.RawMessage `json:"user_id"`
	}
	var id string
	if err := json.Unmarshal(f.Payload, &p); err != nil || len(p.UserID) == 0 {
		c.replyError(ch.joinRef, f.Ref, f.Topic, ErrBadUser.Error())
		return
	}
	if err := json.Unmarshal(p.UserID, &id); err != nil {
		var n json.Number
		if json.Unmarshal(p.UserID, &n) != nil {
			c.replyError(ch.joinRef, f.Ref, f.Topic, ErrBadUser.Error())
			return
		}
		id = n.String()
	}
	err := c.hub.SetBlock(c.user, id, f.Event == "block")
	var in *InputError
	switch {
	case errors.As(err, &in):
		c.replyError(ch.joinRef, f.Ref, f.Topic, in.Reason)
	case err != nil:
		c.replyError(ch.joinRef, f.Ref, f.Topic, storeReason(err))
	default:
		c.reply(ch.joinRef, f.Ref, f.Topic, "ok", nil)
	}
}

// withoutBlocked drops from a lobby's unread list the chats with users
// user blocks.
func (h *Hub) withoutBlocked(ctx context.Context, user string, unread []store.UnreadChat) ([]store.UnreadChat, error) {
	if len(unread) == 0 {
		// Nothing to filter: most lobby joins. The user's blocks are
		// cached at their first chat join, where messages need them.
		return unread, nil
	}
	set, err := h.loadBlocks(ctx, user)
	if err != nil || len(set) == 0 {
		return unread, err
	}
	return slices.DeleteFunc(unread, func(u store.UnreadChat) bool {
		_, yes := set[u.OpponentID]
		return yes
	}), nil
}

// Unread lists user's chats with unread messages as their lobby does:
// without the chats of users they block. The HTTP API uses it.
func (h *Hub) Unread(ctx context.Context, user string) ([]store.UnreadChat, error) {
	unread, err := h.cfg.Store.Unread(ctx, user)
	if err != nil {
		return nil, err
	}
	return h.withoutBlocked(ctx, user, unread)
}

// admitChat applies the chat policy to a join of t by c, on the request
// stage: "" admits. Under the granted policy a join carries a valid grant
// for this pair, which opens the chat for both sides for good, or joins a
// chat opened before.
func (c *Client) admitChat(t topic.Topic, grant string) string {
	h := c.hub
	ctx, cancel := h.ctx()
	defer cancel()
	// Cache both sides' blocks for the message path.
	for _, u := range [...]string{t.A, t.B} {
		if _, known := h.rules.blocked(u, ""); !known {
			if _, err := h.loadBlocks(ctx, u); err != nil {
				return storeReason(err)
			}
		}
	}
	if h.cfg.Grants == nil {
		return ""
	}
	room := t.String()
	if grant != "" {
		user, peer, err := h.cfg.Grants.VerifyGrant(grant)
		switch {
		case err == nil && (user != c.user || peer != t.Other(c.user)):
			err = errors.New("is for another chat")
		case err == nil && h.rules.isOpen(room):
			return ""
		case err == nil:
			if err := h.cfg.Store.OpenChat(ctx, room); err != nil {
				return storeReason(err)
			}
			h.rules.open(room)
			return ""
		}
		// A bad grant is refused unless the chat is open anyway: phoenix.js
		// rejoins with the params it joined with, and the grant in the page
		// may have expired since.
		if open, oerr := h.chatOpen(ctx, room); oerr != nil || !open {
			return "grant " + err.Error()
		}
		return ""
	}
	open, err := h.chatOpen(ctx, room)
	if err != nil {
		return storeReason(err)
	}
	if !open {
		return "grant required"
	}
	return ""
}

// chatOpen reports whether room was opened by a grant: from the cache, or
// from the store (then cached: an opened chat stays open).
func (h *Hub) chatOpen(ctx context.Context, room string) (bool, error) {
	if h.rules.isOpen(room) {
		return true, nil
	}
	open, err := h.cfg.Store.ChatOpen(ctx, room)
	if open {
		h.rules.open(room)
	}
	return open, err
}

func (r *rules) open(room string) {
	r.mu.Lock()
	evictLocked(r.opened)
	r.opened[room] = struct{}{}
	r.mu.Unlock()
}

func (r *rules) isOpen(room string) bool {
	r.mu.RLock()
	_, ok := r.opened[room]
	r.mu.RUnlock()
	return ok
}

// Banned reports whether user is banned now, and why; the server asks it
// at every handshake. It reads memory only.
func (h *Hub) Banned(user string) (reason string, banned bool) {
	h.rules.mu.RLock()
	b, ok := h.rules.bans[user]
	h.rules.mu.RUnlock()
	if !ok || (!b.Until.IsZero() && !time.Now().Before(b.Until)) {
		return "", false
	}
	return banReason(b), true
}

func banReason(b store.Ban) string {
	if b.Reason != "" {
		return "banned: " + b.Reason
	}
	return "banned"
}

// LoadBans replaces the cached bans with the store's.
func (h *Hub) LoadBans(ctx context.Context) error {
	bans, err := h.cfg.Store.Bans(ctx, time.Now())
	if err != nil {
		return err
	}
	m := make(map[string]store.Ban, len(bans))
	for _, b := range bans {
		m[b.UserID] = b
	}
	h.rules.mu.Lock()
	h.rules.bans = m
	h.rules.mu.Unlock()
	return nil
}

// refreshBans reloads the bans every period until ctx ends, which also
// heals announcements lost while the bus was down.
func (h *Hub) refreshBans(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		c, cancel := h.ctx()
		if err := h.LoadBans(c); err != nil {
			h.cfg.Logger.Warn("could not read the bans", "err", err)
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Ban refuses user until until (zero: until Unban) on every node: their
// sockets are closed with closecode.Banned and reason, and new ones are
// refused at the handshake.
func (h *Hub) Ban(user string, until time.Time, reason string) error {
	if topic.ValidID(user) != nil {
		return &InputError{"user_id must be a valid user id"}
	}
	if !until.IsZero() && !until.After(time.Now()) {
		return &InputError{"until must be in the future"}
	}
	ctx, cancel := h.ctx()
	defer cancel()
	b := store.Ban{UserID: user, Until: until.UTC(), Reason: reason}
	if err := h.cfg.Store.Ban(ctx, user, b.Until, reason); err != nil {
		return err
	}
	h.applyBan(b)
	h.announce(ctlBan, b)
	return nil
}

// Unban lifts user's ban on every node.
func (h *Hub) Unban(user string) error {
	ctx, cancel := h.ctx()
	defer cancel()
	if err := h.cfg.Store.Unban(ctx, user); err != nil {
		return err
	}
	h.applyUnban(user)
	h.announce(ctlUnban, map[string]string{"user": user})
	return nil
}

func (h *Hub) applyBan(b store.Ban) {
	h.rules.mu.Lock()
	h.rules.bans[b.UserID] = b
	h.rules.mu.Unlock()
	h.closeUser(b.UserID, closecode.Banned, banReason(b))
}

func (h *Hub) applyUnban(user string) {
	h.rules.mu.Lock()
	delete(h.rules.bans, user)
	h.rules.mu.Unlock()
}

// announce sends a control event to the other nodes.
func (h *Hub) announce(event string, v any) {
	if !h.clustered {
		return
	}
	payload, err := json.Marshal(v)
	if err != nil {
		h.cfg.Logger.Error("control event not encoded", "event", event, "err", err)
		return
	}
	if err := h.cfg.Bus.Publish(controlTopic, encodeBroadcast(controlTopic, event, payload)); err != nil {
		h.cfg.Metrics.BusError()
		h.cfg.Logger.Warn("control event not published", "event", event, "err", err)
	}
}

// control applies a control event another node announced.
func (h *Hub) control(msg []byte) {
	f, err := phx.Decode(msg)
	if err != nil {
		h.cfg.Logger.Warn("malformed control event", "err", err)
		return
	}
	switch f.Event {
	case ctlBlock:
		var p struct{ User string }
		if json.Unmarshal(f.Payload, &p) == nil {
			h.refreshBlocks(p.User)
		}
	case ctlBan:
		var b store.Ban
		if json.Unmarshal(f.Payload, &b) == nil && b.UserID != "" {
			h.applyBan(b)
		}
	case ctlUnban:
		var p struct{ User string }
		if json.Unmarshal(f.Payload, &p) == nil {
			h.applyUnban(p.User)
		}
	}
}

// userShard indexes one shard of the local clients by user, so a ban can
// close a user's sockets.
type userShard struct {
	mu    sync.Mutex
	users map[string][]*Client // guarded by mu
}

func (h *Hub) userShard(user string) *userShard {
	return &h.users[h.shardIndex(user)]
}

func (h *Hub) addUser(c *Client) {
	s := h.userShard(c.user)
	s.mu.Lock()
	if s.users == nil {
		s.users = make(map[string][]*Client)
	}
	s.users[c.user] = append(s.users[c.user], c)
	s.mu.Unlock()
}

func (h *Hub) removeUser(c *Client) {
	s := h.userShard(c.user)
	s.mu.Lock()
	list := s.users[c.user]
	if i := slices.Index(list, c); i >= 0 {
		list = slices.Delete(list, i, i+1)
	}
	if len(list) == 0 {
		delete(s.users, c.user)
	} else {
		s.users[c.user] = list
	}
	s.mu.Unlock()
}

// closeUser closes every local socket of user.
func (h *Hub) closeUser(user string, code int, reason string) int {
	s := h.userShard(user)
	s.mu.Lock()
	list := slices.Clone(s.users[user])
	s.mu.Unlock()
	for _, c := range list {
		c.conn.Close(code, reason)
	}
	return len(list)
}
