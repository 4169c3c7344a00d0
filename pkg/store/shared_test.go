package store

import (
	"context"
	"errors"
	"math"
	"testing"
)

func TestPage(t *testing.T) {
	calls := 0
	fetch := func(limit int) ([]Message, error) {
		calls++
		if limit != MaxPage {
			t.Errorf("fetch got limit %d, want %d", limit, MaxPage)
		}
		return nil, nil
	}
	if got, err := Page(context.Background(), math.MaxInt, fetch); err != nil || got == nil || len(got) != 0 {
		t.Errorf("Page of nothing = %#v, %v; want an empty, non-nil page", got, err)
	}
	if got, err := Page(context.Background(), -1, fetch); err != nil || got == nil || calls != 1 {
		t.Errorf("Page(limit=-1) = %#v, %v after %d fetches; want empty without fetching", got, err, calls)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Page(ctx, 10, fetch); !errors.Is(err, context.Canceled) || calls != 1 {
		t.Errorf("Page(canceled) = %v after %d fetches", err, calls)
	}
	if err := ContextOr(ctx, Unavailable(errors.New("x"))); !errors.Is(err, context.Canceled) {
		t.Errorf("ContextOr(canceled) = %v", err)
	}
	if err := ContextOr(context.Background(), Unavailable(errors.New("x"))); !errors.Is(err, ErrUnavailable) {
		t.Errorf("ContextOr(live) = %v, want ErrUnavailable", err)
	}
	if HistoryBound(0) != math.MaxInt64 || HistoryBound(-3) != math.MaxInt64 || HistoryBound(7) != 7 {
		t.Error("HistoryBound does not map before <= 0 to no bound")
	}
}
