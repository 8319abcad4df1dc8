package ratethrottle

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"weak"
)

// NewShared creates or attaches a limiter whose region lives in the file at
// path (use tmpfs, e.g. /dev/shm/myapp-limits), mapped MAP_SHARED, so that
// every process on the host that opens the same path enforces one set of
// limits: one client's connections, windows and counters are shared.
//
// The first process formats the region for limits; the others attach to it
// and use the limits stored in the region (limits is then only validated;
// change a live region's limits with UpdateLimits, which every process sees).
// An exclusive flock on the file serialises create against attach. When it
// attaches, NewShared frees the connections of processes that died holding
// them (as ReapDead does). The engine does all of this
// (rt_limiter_open_file).
//
// Close unmaps the region; the file stays (remove it when no process uses it
// any more). Do not truncate the file while it is mapped (SIGBUS). A file
// that is not a region of this engine's layout version is refused with an
// error, and is left untouched.
func NewShared(path string, limits Limits) (*Limiter, error) {
	if err := validateLimits(limits); err != nil {
		return nil, err
	}
	return openShared(path, &limits)
}

// AttachShared attaches to a region that NewShared created at path; it
// fails when the file does not exist or is empty.
func AttachShared(path string) (*Limiter, error) { return openShared(path, nil) }

func openShared(path string, limits *Limits) (*Limiter, error) {
	if strings.IndexByte(path, 0) >= 0 {
		return nil, fmt.Errorf("ratethrottle: shared region %q: the path contains a NUL byte", path)
	}
	p, st, errno := cOpenFile(path, limits)
	switch {
	case st == statusOK:
		l := newLimiter(p, path)
		addPeer(l)
		return l, nil
	case st == statusIOError && errno != 0:
		// errno wrapped: errors.Is(err, fs.ErrNotExist) and the like work.
		return nil, fmt.Errorf("ratethrottle: shared region %s: %w", path, errno)
	case st == statusIncompatibleRegion && limits == nil && isEmptyFile(path):
		return nil, fmt.Errorf("ratethrottle: shared region %s is empty (not created by NewShared)", path)
	}
	hint := ""
	if st == statusIncompatibleRegion || st == statusRegionTooSmall {
		hint = " (not a region of this engine version, or its creator died while formatting it; remove the file when no process uses it)"
	}
	return nil, fmt.Errorf("ratethrottle: shared region %s: %s%s", path, statusString(st), hint)
}

// isEmptyFile tells apart, for the error message only, the one incompatible
// region the hint above does not describe: an empty file given to
// AttachShared (the status alone does not say which it was).
func isEmptyFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Size() == 0
}

// SharedPath is the file of a shared limiter ("" for one on the heap).
func (l *Limiter) SharedPath() string {
	if l == nil {
		return ""
	}
	return l.path
}

// fileID names a region file by device and inode, as the engine does.
type fileID struct{ dev, ino uint64 }

// peers holds, weakly, the process's open shared Limiters by their file, so
// that a Conn of a closed one can still be closed through another one on
// the same region (closeThroughPeer). The engine closes a process's open
// connections on a file only when its last handle on the file is freed.
var peers struct {
	sync.Mutex
	byFile map[fileID][]weak.Pointer[Limiter]
}

// addPeer registers a shared Limiter under its file's identity (read from
// the path just opened; when that fails, the Limiter has no peers).
func addPeer(l *Limiter) {
	fi, err := os.Stat(l.path)
	if err != nil {
		return
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return
	}
	l.file = fileID{dev: uint64(st.Dev), ino: st.Ino}
	peers.Lock()
	defer peers.Unlock()
	if peers.byFile == nil {
		peers.byFile = make(map[fileID][]weak.Pointer[Limiter])
	}
	peers.byFile[l.file] = append(peers.byFile[l.file], weak.Make(l))
}

// removePeer forgets l (Close calls it before freeing the handle), and any
// entry whose Limiter was collected.
func removePeer(l *Limiter) {
	if l.file == (fileID{}) {
		return
	}
	peers.Lock()
	defer peers.Unlock()
	kept := peers.byFile[l.file][:0]
	for _, w := range peers.byFile[l.file] {
		if p := w.Value(); p != nil && p != l {
			kept = append(kept, w)
		}
	}
	if len(kept) == 0 {
		delete(peers.byFile, l.file)
	} else {
		peers.byFile[l.file] = kept
	}
}

// closeThroughPeer closes connection h of a closed shared Limiter on file id
// through another open Limiter of this process on the same region; without
// one, the engine already closed it when the last handle was freed.
func closeThroughPeer(id fileID, h uint64) {
	if id == (fileID{}) {
		return
	}
	peers.Lock()
	var open []*Limiter
	for _, w := range peers.byFile[id] {
		if p := w.Value(); p != nil {
			open = append(open, p)
		}
	}
	peers.Unlock()
	for _, p := range open {
		if g := p.enter(); g != nil {
			cDisconnect(p.ptr, h)
			p.leave(g)
			return
		}
	}
}
