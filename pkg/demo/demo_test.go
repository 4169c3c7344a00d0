package demo

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/elchat/elchat/pkg/auth"
	"github.com/elchat/elchat/pkg/hub"
)

var testSecret = []byte("demo-test-secret-0123456789abcdef")

func get(t *testing.T, h http.Handler, target string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec.Result()
}

func body(t *testing.T, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestIndexServesThePage(t *testing.T) {
	h := New(testSecret, nil)
	res := get(t, h, "/")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET / = %d", res.StatusCode)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("Content-Type = %q", ct)
	}
	if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("Content-Security-Policy = %q", csp)
	}
	page := body(t, res)
	for _, want := range []string{`src="/demo/app.js"`, `href="/demo/app.css"`, `data-testid="contact-list"`, `data-testid="composer"`} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
}

func TestStaticFiles(t *testing.T) {
	h := New(testSecret, nil)
	for path, want := range map[string]string{
		"/demo/phoenix.mjs": "javascript",
		"/demo/app.js":      "javascript",
		"/demo/app.css":     "text/css",
	} {
		res := get(t, h, path)
		if res.StatusCode != http.StatusOK {
			t.Errorf("GET %s = %d", path, res.StatusCode)
			continue
		}
		// Browsers refuse module scripts with a non-JavaScript type.
		if ct := res.Header.Get("Content-Type"); !strings.Contains(ct, want) {
			t.Errorf("GET %s Content-Type = %q, want %s", path, ct, want)
		}
	}
	mjs := body(t, get(t, h, "/demo/phoenix.mjs"))
	for _, want := range []string{"MIT License", "phoenix 1.8.16", "Presence", "Socket"} {
		if !strings.Contains(mjs, want) {
			t.Errorf("phoenix.mjs lacks %q", want)
		}
	}
	if strings.Contains(mjs, "sourceMappingURL=") {
		t.Error("phoenix.mjs points at a source map that is not served")
	}
	app := body(t, get(t, h, "/demo/app.js"))
	if strings.Contains(app, "innerHTML") {
		t.Error("app.js uses innerHTML; user text must go through textContent")
	}
}

func TestUnknownPathsAre404(t *testing.T) {
	h := New(testSecret, nil)
	for _, path := range []string{"/nope", "/demo/", "/demo/missing.js", "/demo/token?user=99", "/demo/token", "/demo/token?user=1%20"} {
		if res := get(t, h, path); res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 404", path, res.StatusCode)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/demo/token?user=1", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /demo/token = %d, want 405", rec.Code)
	}
}

func TestTokenIsValidForTheNode(t *testing.T) {
	h := New(testSecret, nil)
	res := get(t, h, "/demo/token?user=2")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /demo/token?user=2 = %d", res.StatusCode)
	}
	var got struct {
		Token string `json:"token"`
		User  User   `json:"user"`
	}
	if err := json.NewDecoder(res.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.User.ID != "2" || got.User.Name != "bob" {
		t.Errorf("user = %+v", got.User)
	}
	claims, err := auth.NewVerifier(testSecret).Verify(got.Token)
	if err != nil {
		t.Fatalf("token does not verify with the node's secret: %v", err)
	}
	if claims.UserID != "2" || claims.Name != "bob" {
		t.Errorf("claims = %+v", claims)
	}
	if _, err := auth.NewVerifier([]byte("another-secret-0123456789abcdef")).Verify(got.Token); err == nil {
		t.Error("token verifies with a different secret")
	}
}

// stubPresence reports the users in online as present in their lobby.
type stubPresence struct {
	hub.Presence
	online map[string]bool
	calls  []string
}

func (p *stubPresence) Present(_ context.Context, topic, key string) (bool, error) {
	p.calls = append(p.calls, topic+"/"+key)
	return p.online[key], nil
}

func TestUsersReportPresence(t *testing.T) {
	p := &stubPresence{online: map[string]bool{"1": true, "4": true}}
	res := get(t, New(testSecret, p), "/demo/users")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /demo/users = %d", res.StatusCode)
	}
	var users []User
	if err := json.NewDecoder(res.Body).Decode(&users); err != nil {
		t.Fatal(err)
	}
	if len(users) != len(Users) {
		t.Fatalf("got %d users, want %d", len(users), len(Users))
	}
	for _, u := range users {
		if u.Online != p.online[u.ID] {
			t.Errorf("user %s online = %v, want %v", u.ID, u.Online, p.online[u.ID])
		}
	}
	if p.calls[0] != "user:1/1" {
		t.Errorf("presence asked %q, want user:1/1 (a user's own lobby)", p.calls[0])
	}
	// The package-level list is not mutated by a request.
	for _, u := range Users {
		if u.Online {
			t.Errorf("Users[%s].Online was changed", u.ID)
		}
	}
}

func TestUsersWithoutPresenceAreOffline(t *testing.T) {
	var users []User
	if err := json.NewDecoder(get(t, New(testSecret, nil), "/demo/users").Body).Decode(&users); err != nil {
		t.Fatal(err)
	}
	for _, u := range users {
		if u.Online {
			t.Errorf("user %s online without a presence", u.ID)
		}
	}
}
