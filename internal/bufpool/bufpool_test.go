package bufpool

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestTiers: a buffer has the length asked and its tier's capacity (or its
// own, above the largest tier); above 1 MiB no tier is more than 1.5× the
// one below it.
func TestTiers(t *testing.T) {
	for i := 5; i < len(tiers); i++ {
		assert.LessOrEqual(t, 2*tiers[i], 3*tiers[i-1], "tier %d", tiers[i])
	}
	for _, tc := range []struct{ n, cap int }{
		{0, 256}, {1, 256}, {256, 256}, {257, 4 << 10}, {11000, 16 << 10},
		{16 << 10, 16 << 10}, {20000, 32 << 10}, {1 << 20, 1 << 20}, {1<<20 + 1, 3 << 19},
		{1_200_000, 3 << 19}, {3 << 20, 3 << 20}, {4<<20 + 100_000, 6 << 20}, {16 << 20, 16 << 20},
		{16<<20 + 1, 16<<20 + 1},
	} {
		b := Pool.Get(tc.n)
		assert.Len(t, *b, tc.n)
		assert.Equal(t, tc.cap, cap(*b), "Get(%d)", tc.n)
		Pool.Put(b)
	}
}

// TestForeignCapacityDropped: a buffer of no tier's capacity is not kept.
func TestForeignCapacityDropped(t *testing.T) {
	b := make([]byte, 10, 300)
	Pool.Put(&b) // not a tier's capacity: ignored
	c := Pool.Get(10)
	assert.Equal(t, 256, cap(*c))
}

func BenchmarkGetPut16K(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		buf := Pool.Get(11000)
		Pool.Put(buf)
	}
}
