// Command elchat runs the ElChat chat server.
//
//	elchat serve     run a node
//	elchat migrate   apply the PostgreSQL migrations
//	elchat token     mint a token for a user (development and scripts)
//
// Every flag can also be set with an ELCHAT_* environment variable: the flag
// name in upper case with dashes as underscores (--database-url is
// ELCHAT_DATABASE_URL). Flags win over the environment.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/peterbourgon/ff/v3"

	"github.com/elchat/elchat/pkg/auth"
	"github.com/elchat/elchat/pkg/node"
	"github.com/elchat/elchat/pkg/store/postgres"
)

const usage = `usage: elchat <command> [flags]

commands:
  serve     run an ElChat node
  migrate   apply database migrations to ELCHAT_DATABASE_URL
  token     print a signed token: elchat token --user ID --name NAME [--ttl 24h]
  grant     print a chat grant: elchat grant --user A --peer B [--ttl 24h]

Run "elchat <command> -h" for the command's flags.
`

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "elchat:", err)
		}
		os.Exit(2)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stderr)
	case "migrate":
		return migrate(args[1:], stdout, stderr)
	case "token":
		return token(args[1:], stdout, stderr)
	case "grant":
		return grant(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

// parse reads flags from args, then ELCHAT_* variables for those not given.
func parse(fs *flag.FlagSet, args []string) error {
	return ff.Parse(fs, args, ff.WithEnvVarPrefix("ELCHAT"))
}

func migrate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dbURL := fs.String("database-url", "", "PostgreSQL URL (postgres://...) to migrate")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dbURL == "" {
		return errors.New("migrate needs --database-url or ELCHAT_DATABASE_URL (the embedded store migrates itself)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := postgres.Migrate(ctx, *dbURL); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "migrations applied")
	return nil
}

// signing holds the flags every minting command shares: the secret, the
// lifetime and the development fallback.
type signing struct {
	secret string
	ttl    time.Duration
	dev    bool
}

func (s *signing) flags(fs *flag.FlagSet) {
	fs.StringVar(&s.secret, "secret", "", "HS256 secret shared with the host app")
	fs.DurationVar(&s.ttl, "ttl", 24*time.Hour, "lifetime")
	fs.BoolVar(&s.dev, "dev", false, "use the development secret when none is set")
}

func (s *signing) key() ([]byte, error) {
	return secretKey(s.secret, s.dev, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func token(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var sg signing
	sg.flags(fs)
	user := fs.String("user", "", "user id (the token's sub)")
	name := fs.String("name", "", "display name")
	if err := parse(fs, args); err != nil {
		return err
	}
	key, err := sg.key()
	if err != nil {
		return err
	}
	if *user == "" {
		return errors.New("token needs --user")
	}
	if *name == "" {
		*name = *user
	}
	tok, err := auth.Mint(key, *user, *name, sg.ttl)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

// grant prints a chat grant (chat policy "granted") for --user to open the
// chat with --peer.
func grant(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("grant", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var sg signing
	sg.flags(fs)
	user := fs.String("user", "", "the joining user (the grant's sub)")
	peer := fs.String("peer", "", "the other user of the chat (the grant's peer)")
	if err := parse(fs, args); err != nil {
		return err
	}
	key, err := sg.key()
	if err != nil {
		return err
	}
	if *user == "" || *peer == "" {
		return errors.New("grant needs --user and --peer")
	}
	tok, err := auth.MintGrant(key, *user, *peer, sg.ttl)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

func secretKey(secret string, dev bool, log *slog.Logger) ([]byte, error) {
	switch {
	case secret != "":
		if len(secret) < 16 && !dev {
			return nil, errors.New("ELCHAT_SECRET must be at least 16 bytes")
		}
		return []byte(secret), nil
	case dev:
		log.Warn("using the public development secret: never expose this node")
		return []byte(node.DevSecret), nil
	default:
		return nil, errors.New("set ELCHAT_SECRET (or --secret) to the HS256 secret shared with the host app, or pass --dev")
	}
}
