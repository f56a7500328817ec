package server

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// loopHarness runs reconcileLoop with a round that reports each call on
// rounds and answers what settle says.
type loopHarness struct {
	changed chan struct{}
	count   atomic.Uint64
	rounds  chan int
}

func startLoop(t *testing.T, every, idle time.Duration, settle func(n int) bool) *loopHarness {
	t.Helper()
	h := &loopHarness{changed: make(chan struct{}, 1), rounds: make(chan int, 64)}
	stop, done := make(chan struct{}), make(chan struct{})
	n := 0
	go func() {
		defer close(done)
		reconcileLoop(stop, h.changed, h.count.Load, func(context.Context) bool {
			n++
			h.rounds <- n
			return settle(n)
		}, every, idle)
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
	})
	return h
}

// change does what the registry's noteChange does.
func (h *loopHarness) change() {
	h.count.Add(1)
	select {
	case h.changed <- struct{}{}:
	default:
	}
}

func (h *loopHarness) nextRound(t *testing.T) int {
	t.Helper()
	select {
	case n := <-h.rounds:
		return n
	case <-time.After(10 * time.Second):
		t.Fatal("no round")
		return 0
	}
}

func (h *loopHarness) noRound(t *testing.T, window time.Duration) {
	t.Helper()
	select {
	case n := <-h.rounds:
		t.Fatalf("round %d ran with nothing to do", n)
	case <-time.After(window):
	}
}

// A settled loop sleeps (an hour here) until a change is signalled, and
// then runs a round at once.
func TestReconcileLoopWakesOnChange(t *testing.T) {
	h := startLoop(t, time.Millisecond, time.Hour, func(int) bool { return true })
	h.nextRound(t)
	for range 3 {
		h.noRound(t, 50*time.Millisecond)
		h.change()
		h.nextRound(t)
	}
}

// Rounds that find work are repeated every `every`, then the loop rests.
func TestReconcileLoopRepeatsWhileUnsettled(t *testing.T) {
	h := startLoop(t, time.Millisecond, time.Hour, func(n int) bool { return n >= 5 })
	for want := 1; want <= 5; want++ {
		if got := h.nextRound(t); got != want {
			t.Fatalf("round %d, want %d", got, want)
		}
	}
	h.noRound(t, 50*time.Millisecond)
}

// A change made while a round runs (after it read the registry) gets a
// round of its own, even if its signal was taken before the loop waits.
func TestReconcileLoopSeesChangesDuringARound(t *testing.T) {
	var h *loopHarness
	ready := make(chan struct{})
	h = startLoop(t, time.Millisecond, time.Hour, func(n int) bool {
		if n == 1 {
			<-ready
			h.count.Add(1) // no signal: the loop must see the count moved
		}
		return true
	})
	close(ready)
	h.nextRound(t)
	h.nextRound(t)
	h.noRound(t, 50*time.Millisecond)
}

// With nothing changing, a settled loop still runs a round every idle.
func TestReconcileLoopBackstop(t *testing.T) {
	h := startLoop(t, time.Millisecond, 20*time.Millisecond, func(int) bool { return true })
	for range 3 {
		h.nextRound(t)
	}
}

// Stopping the loop ends the context of the round in progress, so that a
// round blocked in a proposal does not hold up the node's Stop.
func TestReconcileLoopStopEndsRound(t *testing.T) {
	stop, done := make(chan struct{}), make(chan struct{})
	started := make(chan struct{})
	var once sync.Once
	go func() {
		defer close(done)
		reconcileLoop(stop, make(chan struct{}), func() uint64 { return 0 }, func(ctx context.Context) bool {
			once.Do(func() { close(started) })
			<-ctx.Done() // a proposal waiting for an answer that never comes
			return false
		}, time.Millisecond, time.Hour)
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("no round")
	}
	close(stop)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the loop did not return: its round's context did not end at stop")
	}
}
