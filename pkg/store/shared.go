package store

import (
	"context"
	"fmt"
	"math"
)

// This file holds what every implementation of Store does the same way, so
// that the stores differ only in how they talk to their database.

// Unavailable wraps a database failure in ErrUnavailable, keeping its text.
func Unavailable(err error) error {
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

// ContextOr returns ctx's error when ctx has ended and err otherwise: a call
// that fails after its caller gave up reports the caller's own cancellation,
// not a database fault. err must be non-nil.
func ContextOr(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	return err
}

// HistoryBound maps History's before to the exclusive upper id bound a store
// queries: before <= 0 asks for the newest messages, so nothing bounds them.
func HistoryBound(before int64) int64 {
	if before <= 0 {
		return math.MaxInt64
	}
	return before
}

// Page runs a paged read the way History and Since promise: an ended ctx is
// reported before any work, limit is clamped with ClampLimit and a
// non-positive one answers an empty page without calling fetch, and the page
// is never nil. fetch gets the clamped limit and classifies its own errors.
func Page(ctx context.Context, limit int, fetch func(limit int) ([]Message, error)) ([]Message, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	limit = ClampLimit(limit)
	if limit == 0 {
		return []Message{}, nil
	}
	msgs, err := fetch(limit)
	if err != nil {
		return nil, err
	}
	if msgs == nil {
		msgs = []Message{}
	}
	return msgs, nil
}
