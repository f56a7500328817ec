package commitlog

import (
	"fmt"
	"sync"
)

// A process that died (the machine did not) leaves in the page cache what
// it never synced: records appended after its last sync, directory names
// no directory sync covered (a segment it rolled to, a directory it made;
// an operator's mkdir leaves the same), and everything when it ran in os
// mode. The next process reads all of it as the log, and raft takes what
// the log holds for stored: a follower acknowledges entries it holds at
// once when the leader sends them again, and a candidate's log counts
// them. So it must be durable before a log is opened: the first MkdirAll
// of a process on a filesystem syncs the whole filesystem, once (one
// syncfs; without syncfs, sync(2)). What the process writes itself is
// synced as it goes.
var startSynced = struct {
	mu   sync.Mutex
	devs map[uint64]bool
}{devs: make(map[uint64]bool)}

// startSync syncs the filesystem holding dir, an existing directory, if
// this process has not yet. One lock for every filesystem: a caller waits
// for a sync in progress on any (at start-up, once per filesystem).
func startSync(dir string) error {
	dev := deviceOf(dir) // 0 when unknown: then sync(2), once
	startSynced.mu.Lock()
	defer startSynced.mu.Unlock()
	if startSynced.devs[dev] {
		return nil
	}
	if err := syncFilesystem(dir); err != nil {
		return fmt.Errorf("commitlog: sync the filesystem of %s at start: %w", dir, err)
	}
	startSynced.devs[dev] = true
	return nil
}
