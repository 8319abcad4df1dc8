package ratethrottle

import (
	"fmt"
	"os"
	"strings"
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
		return newLimiter(p, path), nil
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
