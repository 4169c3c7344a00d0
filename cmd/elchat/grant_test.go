package main

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/elchat/elchat/pkg/auth"
)

// TestGrant: elchat grant prints, alone on stdout, a grant the node's
// verifier accepts for exactly that pair.
func TestGrant(t *testing.T) {
	const secret = "grant-command-secret-0123456789"
	t.Setenv("ELCHAT_SECRET", secret)
	var out bytes.Buffer
	if err := run([]string{"grant", "--user", "42", "--peer", "7", "--ttl", "1h"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	g := strings.TrimSpace(out.String())
	if strings.ContainsAny(g, " \n") {
		t.Fatalf("output %q is not one token", out.String())
	}
	user, peer, err := auth.NewVerifier([]byte(secret)).VerifyGrant(g)
	if err != nil || user != "42" || peer != "7" {
		t.Fatalf("VerifyGrant = %q, %q, %v", user, peer, err)
	}
	for _, args := range [][]string{{"grant", "--user", "42"}, {"grant", "--user", "1", "--peer", "1"}} {
		if err := run(args, io.Discard, io.Discard); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
}
