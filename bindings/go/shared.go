package ratethrottle

import (
	"fmt"
	"os"
	"syscall"
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
// attaches, NewShared calls ReapDead to free the connections of processes
// that died holding them.
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
	flags := os.O_RDWR
	if limits != nil {
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ratethrottle: shared region: %w", err)
	}
	defer f.Close() // the mapping outlives the descriptor; closing it drops the lock
	fd := int(f.Fd())
	if err := syscall.Flock(fd, syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("ratethrottle: shared region %s: flock: %w", path, err)
	}
	// Unlock explicitly: the mapping keeps the open file description (and
	// with it the flock) alive after the descriptor is closed.
	defer syscall.Flock(fd, syscall.LOCK_UN)
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("ratethrottle: shared region: %w", err)
	}
	size := fi.Size()
	create := size == 0
	if create {
		if limits == nil {
			return nil, fmt.Errorf("ratethrottle: shared region %s is empty (not created by NewShared)", path)
		}
		size = int64(regionSize(*limits))
		if err := f.Truncate(size); err != nil {
			return nil, fmt.Errorf("ratethrottle: shared region %s: %w", path, err)
		}
	}
	if size != int64(int(size)) {
		return nil, fmt.Errorf("ratethrottle: shared region %s: size %d too large", path, size)
	}
	mem, err := syscall.Mmap(fd, 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("ratethrottle: shared region %s: mmap: %w", path, err)
	}
	var (
		p  *cLimiter
		st uint32
	)
	if create {
		p, st = cInitIn(mem, *limits)
	} else {
		p, st = cAttach(mem)
	}
	if st != statusOK {
		_ = syscall.Munmap(mem)
		if create {
			_ = f.Truncate(0) // leave no half-made region behind
		}
		hint := ""
		if st == statusIncompatibleRegion || st == statusRegionTooSmall {
			hint = " (not a region of this engine version, or its creator died while formatting it; remove the file when no process uses it)"
		}
		return nil, fmt.Errorf("ratethrottle: shared region %s: %s%s", path, statusString(st), hint)
	}
	l := newLimiter(p, mem, path)
	if !create {
		l.ReapDead()
	}
	return l, nil
}

// SharedPath is the file of a shared limiter ("" for one on the heap).
func (l *Limiter) SharedPath() string { return l.path }
