package ratethrottle

import (
	"context"
	"encoding/json"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// KeyFunc picks the client id of a request. Returning ok == false answers
// 400 (the request has no usable client address).
type KeyFunc func(r *http.Request) (key string, ok bool)

// MiddlewareOptions configures Middleware.
type MiddlewareOptions struct {
	// Key picks the client id. Default: RemoteIPKey(nil), the peer's IP with
	// IPv6 addresses aggregated to their /64.
	Key KeyFunc
	// AllRequests also limits requests that are not WebSocket upgrades. By
	// default they pass through unlimited (an upgrade request is one with
	// "Connection: upgrade" and "Upgrade: websocket").
	AllRequests bool
	// OnDenied replaces the default answer to a denied connect (429 with
	// Retry-After, or 503 for a full table, and a small JSON body).
	OnDenied func(w http.ResponseWriter, r *http.Request, d Decision)
}

type connKey struct{}

// connSlot is what Middleware puts in the request's context: the Conn, and
// whether the handler took it over (TakeConn).
type connSlot struct {
	conn  *Conn
	taken atomic.Bool
}

// ConnFromContext returns the Conn that Middleware opened for the request
// (nil when there is none). Middleware still closes it when the handler
// returns.
func ConnFromContext(ctx context.Context) *Conn {
	if s, _ := ctx.Value(connKey{}).(*connSlot); s != nil {
		return s.conn
	}
	return nil
}

// TakeConn returns the Conn that Middleware opened for the request (nil
// when there is none) and takes it over: Middleware no longer closes it
// when the handler returns, and the caller must Close it when the socket
// ends. For a handler that hands its socket to another goroutine and
// returns before the socket ends: with ConnFromContext the slot would be
// freed when the handler returns, while the socket is still open.
func TakeConn(ctx context.Context) *Conn {
	s, _ := ctx.Value(connKey{}).(*connSlot)
	if s == nil {
		return nil
	}
	s.taken.Store(true)
	return s.conn
}

// Middleware limits WebSocket upgrade requests: it connects the request's
// client to lim before next runs (so before the upgrade), answers a denial
// itself, and closes the Conn when next returns. A WebSocket handler returns
// when its socket ends (gorilla and coder handlers read until then), so the
// connection counts as live exactly as long as the socket; a handler that
// hands the socket to another goroutine and returns early must take over
// the Conn with TakeConn and Close it when the socket ends (see Conn
// ownership in the README). Get the Conn with ConnFromContext to check
// messages on it.
//
// Denials: TABLE_FULL answers 503; every other reason 429. Retry-After is
// the engine's RetryAfter in whole seconds, rounded up; it is "0" for a
// concurrency denial, which the engine answers with 0 (retry when one of
// the client's connections closes).
func Middleware(lim *Limiter, o MiddlewareOptions) func(http.Handler) http.Handler {
	key := o.Key
	if key == nil {
		key = RemoteIPKey(nil)
	}
	denied := o.OnDenied
	if denied == nil {
		denied = WriteDenied
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !o.AllRequests && !IsUpgrade(r) {
				next.ServeHTTP(w, r)
				return
			}
			id, ok := key(r)
			if !ok {
				http.Error(w, "ratethrottle: no client address", http.StatusBadRequest)
				return
			}
			conn, d := lim.Connect(id)
			if !d.Allowed {
				denied(w, r, d)
				return
			}
			slot := &connSlot{conn: conn}
			defer func() {
				if !slot.taken.Load() {
					conn.Close() // nil-safe: an untracked fail-open connect has no Conn
				}
			}()
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), connKey{}, slot)))
		})
	}
}

// WriteDenied is the default answer to a denied connect: 503 for
// ReasonTableFull (and for a closed limiter), 429 otherwise, with
// Retry-After in whole seconds rounded up, and a JSON body
// {"error": reason, "retry_after_ms": n}.
func WriteDenied(w http.ResponseWriter, _ *http.Request, d Decision) {
	status := http.StatusTooManyRequests
	if d.Reason == ReasonTableFull || d.Reason == ReasonInvalidArgument {
		status = http.StatusServiceUnavailable
	}
	body := map[string]any{"error": d.Reason.String()}
	if d.RetryAfter != RetryNever {
		w.Header().Set("Retry-After", strconv.FormatInt(RetryAfterSeconds(d.RetryAfter), 10))
		body["retry_after_ms"] = d.RetryAfter.Milliseconds()
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// RetryAfterSeconds rounds a wait up to whole seconds, as Retry-After needs.
// A negative wait is 0; RetryNever (and any wait too long to round up
// without overflowing) is math.MaxInt64 / int64(time.Second) seconds, about
// 292 years: callers that can say "never" (WriteDenied omits the header)
// should test for RetryNever first.
func RetryAfterSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	if d > math.MaxInt64-time.Second {
		return math.MaxInt64 / int64(time.Second)
	}
	return int64((d + time.Second - 1) / time.Second)
}

// IsUpgrade reports whether r asks for a WebSocket upgrade.
func IsUpgrade(r *http.Request) bool {
	return headerHasToken(r.Header, "Connection", "upgrade") &&
		headerHasToken(r.Header, "Upgrade", "websocket")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// RemoteIPKey keys requests by the peer's IP address: an IPv4 address as
// itself ("203.0.113.7"), an IPv6 address by its /64 ("2001:db8:1:2::/64"),
// because one host usually owns a whole /64. X-Forwarded-For is used only
// when the peer is one of trustedProxies: then the key is the right-most
// address in X-Forwarded-For that is not itself a trusted proxy (the
// left-most entries are whatever the client wrote). With no trusted
// proxies, headers are ignored.
func RemoteIPKey(trustedProxies []netip.Prefix) KeyFunc {
	return func(r *http.Request) (string, bool) {
		ip, ok := parseHostIP(r.RemoteAddr)
		if !ok {
			return "", false
		}
		if trusted(trustedProxies, ip) {
			if fwd, ok := forwardedFor(r.Header.Values("X-Forwarded-For"), trustedProxies); ok {
				ip = fwd
			}
		}
		return ipKey(ip), true
	}
}

func parseHostIP(addr string) (netip.Addr, bool) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return ip.Unmap().WithZone(""), true
}

func trusted(prefixes []netip.Prefix, ip netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// forwardedFor walks X-Forwarded-For from the right and returns the first
// address that is not a trusted proxy.
func forwardedFor(values []string, trustedProxies []netip.Prefix) (netip.Addr, bool) {
	var hops []string
	for _, v := range values {
		hops = append(hops, strings.Split(v, ",")...)
	}
	for i := len(hops) - 1; i >= 0; i-- {
		ip, ok := parseHostIP(strings.TrimSpace(hops[i]))
		if !ok {
			return netip.Addr{}, false // a malformed hop: stop trusting the header
		}
		if !trusted(trustedProxies, ip) {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

func ipKey(ip netip.Addr) string {
	if ip.Is4() {
		return ip.String()
	}
	p, _ := ip.Prefix(64)
	return p.String()
}
