// Package bufpool is the gRPC buffer pool of every connection this module
// dials or serves and of its codec (package fastcodec): grpc-go's tiers
// (256 B, 4 KiB, 16 KiB, 32 KiB, 1 MiB) and steps of at most 1.5× from
// there to 16 MiB, without the clearing.
//
// grpc-go's default pool zeroes the whole capacity of every buffer it hands
// out, so that a reader of uninitialised bytes cannot see another package's
// data. Every buffer taken from this pool is overwritten before it is read:
// a received DATA frame is read into it with io.ReadFull, a message that
// arrived in several frames is copied into it whole before it is decoded,
// and a marshalled message is appended into it from length 0 (grpc-go's own
// socket read and write buffers come from a non-zeroing pool already).
// On the 3-node W1 benchmark the clearing was 6 % of the leader's CPU and
// 8 % of each follower's (runtime.memclrNoHeapPointers under
// sizedBufferPool.Get, mostly gathering peer messages for proto.Unmarshal);
// without it, W1 ×1.07 msgs/s and ×0.93 node CPU per message (medians of 5
// alternating runs beside the build without it).
//
// The tiers above 1 MiB hold the encoded answers of GetMessages (about
// 3.2 MB by default, a full one just under 4 MiB) and Subscribe, and large
// batches. grpc-go serves
// those from one fallback pool that also clears them, and the codec used to
// take them from there: 4 % of the CPU of a follower serving W3 was that
// clearing. The steps keep a buffer within 1.5× of what it holds (a
// default answer and a full one take the 4 MiB tier).
//
// Only buffers of a tier's exact capacity go back to it; larger requests
// are allocated and left to the garbage collector.
package bufpool

import (
	"sync"

	"google.golang.org/grpc/mem"
)

var tiers = [...]int{256, 4 << 10, 16 << 10, 32 << 10, 1 << 20,
	3 << 19, 2 << 20, 3 << 20, 4 << 20, 6 << 20, 8 << 20, 12 << 20, 16 << 20}

type pool struct {
	pools [len(tiers)]sync.Pool
}

// Pool is the module's buffer pool. Get returns a buffer whose contents are
// undefined: the caller must write every byte it later reads.
var Pool mem.BufferPool = &pool{}

func (p *pool) Get(n int) *[]byte {
	for i, size := range tiers {
		if n > size {
			continue
		}
		if b, ok := p.pools[i].Get().(*[]byte); ok {
			*b = (*b)[:n]
			return b
		}
		b := make([]byte, n, size)
		return &b
	}
	b := make([]byte, n)
	return &b
}

func (p *pool) Put(b *[]byte) {
	c := cap(*b)
	for i, size := range tiers {
		if c == size {
			*b = (*b)[:0]
			p.pools[i].Put(b)
			return
		}
	}
}
