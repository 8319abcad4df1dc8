package ratethrottle

import "fmt"

// Limits configures a Limiter. Every numeric limit uses 0 for "no limit",
// except WindowMs, MaxClients and MaxConnections, which must be at least 1.
// Start from DefaultLimits (or a preset) and change what you need: the zero
// value Limits{} is refused (WindowMs 0 is out of range).
//
// Ranges are checked by the engine (Validate, New): messages per window up
// to 262143, bytes per window up to 67108863, connections per window and
// concurrent connections up to 16777215, MaxClients and MaxConnections
// 1..8388608. A value out of range is an error naming the field, never
// wrapped.
type Limits struct {
	WindowMs                 uint32 // length of every window in ms (default 60000)
	ConnectionsPerWindow     uint32 // new connections per client per window (60)
	MaxConcurrentConnections uint32 // live connections per client (10)
	MessagesPerWindow        uint32 // messages per connection per window (1000)
	BytesPerWindow           uint64 // bytes per connection per window (0 = off)
	MaxMessageSize           uint32 // largest single message in bytes (65536)
	ClientMessagesPerWindow  uint32 // messages per client or key per window (0 = off)
	ClientBytesPerWindow     uint64 // bytes per client or key per window (0 = off)
	MaxClients               uint32 // client table capacity, fixed at creation (65536)
	MaxConnections           uint32 // connection slab capacity, fixed at creation (65536)
	FailOpen                 bool   // table full: allow untracked instead of denying with TABLE_FULL
	DryRun                   bool   // decide and report, but allow (the would-be reason is set)
}

// DefaultLimits returns the engine's defaults (the seed's): 60 s windows,
// 60 connections per window, 10 concurrent connections, 1000 messages per
// window, bandwidth off, 65536-byte messages, client limits off, 65536
// clients and connections. They come from rt_limits_default.
func DefaultLimits() Limits { return defaultLimits() }

// StrictLimits is the preset for APIs: 5 connections/min, 2 concurrent,
// 50 messages/min, 100 KB/min, 1 KiB messages (rt_limits_strict).
func StrictLimits() Limits { return presetLimits("strict") }

// ModerateLimits is the preset for chat: 10 connections/min, 5 concurrent,
// 100 messages/min, 1 MiB/min, 10 KiB messages (rt_limits_moderate).
func ModerateLimits() Limits { return presetLimits("moderate") }

// GenerousLimits is the preset for internal tools: 50 connections/min,
// 20 concurrent, 1000 messages/min, 10 MiB/min, 64 KiB messages
// (rt_limits_generous).
func GenerousLimits() Limits { return presetLimits("generous") }

// Validate asks the engine whether l is acceptable; the error is a
// *LimitsError naming the bad field and its allowed range.
func (l Limits) Validate() error { return validateLimits(l) }

// RegionSize is the number of bytes a region for these limits needs (what
// NewShared sizes its file to); 0 when l is invalid.
func RegionSize(l Limits) int { return regionSize(l) }

// LimitsError is the engine's refusal of a Limits value.
type LimitsError struct {
	Status  string // the rt_status phrase, e.g. "invalid limits"
	Message string // names the field and its range, e.g. "invalid window_ms: 0 is out of range 1..=4294967295"
}

func (e *LimitsError) Error() string {
	if e.Message == "" {
		return "ratethrottle: " + e.Status
	}
	return fmt.Sprintf("ratethrottle: %s: %s", e.Status, e.Message)
}

// Version is the engine's version string (rt_version).
func Version() string { return engineVersion() }
