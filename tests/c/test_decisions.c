/*
 * Every reason, with retry_after computed by hand from the rule
 *
 *   a request of cost k passes iff p*(W-e) + (c+k)*W <= L*W
 *
 * (p, c: counts of the previous and current window; e: ms into the current
 * window; windows aligned to now_ms / W), plus dry run, run-time limit
 * changes, statistics and connection info. Fake clock (the _at forms) only.
 */
#include "harness.h"

static rt_limits base(void) {
  rt_limits l = t_limits();
  l.window_ms = 1000;
  l.connections_per_window = 0;
  l.max_concurrent_connections = 0;
  l.messages_per_window = 0;
  l.max_message_size = 0;
  return l;
}

static void connection_rate(void) {
  rt_limits l = base();
  l.connections_per_window = 2;
  rt_limiter *lim = t_new(&l);
  rt_conn c = 0;
  CHECK_DECISION(rt_connect_at(lim, ID("a"), 0, &c), true, RT_OK, 0);
  CHECK_DECISION(rt_connect_at(lim, ID("a"), 10, &c), true, RT_OK, 0);
  /* p=0 c=2 k=1 L=2: c+k > L, so the next window: 2*(1000-e') <= 1*1000
   * holds from e' = 500; from t=20 that is 980 + 500 = 1480 ms. */
  rt_decision d = rt_connect_at(lim, ID("a"), 20, &c);
  CHECK_DECISION(d, false, RT_CONNECTION_RATE, 1480);
  CHECK_EQ(c, 0);
  CHECK_EQ(d.limit, 2);
  CHECK_EQ(d.current, 2);
  CHECK_EQ(d.remaining, 0);
  /* Denied requests are not counted: the wait only shrinks with time. */
  CHECK_DECISION(rt_connect_at(lim, ID("a"), 1499, &c), false, RT_CONNECTION_RATE, 1);
  CHECK_DECISION(rt_connect_at(lim, ID("a"), 1500, &c), true, RT_OK, 0);
  CHECK(c != 0);
  /* Another client is not affected. */
  CHECK_DECISION(rt_connect_at(lim, ID("b"), 20, &c), true, RT_OK, 0);
  /* The seed's check_connection reads the real clock: only its reason. */
  CHECK_EQ(rt_check_connection(lim, ID("fresh")).reason, RT_OK);
  /* Its _at form takes our clock and decides as rt_connect_at does: at
   * t=1500, 2*(1000-500) + (1+1)*1000 > 2*1000, denied with the same wait. */
  d = rt_check_connection_at(lim, ID("a"), 1500);
  CHECK_DECISION(d, false, RT_CONNECTION_RATE, rt_connect_at(lim, ID("a"), 1500, &c).retry_after_ms);
  rt_stats s = t_stats(lim);
  CHECK_EQ(s.denied[RT_CONNECTION_RATE], 4);
  CHECK_EQ(s.connections_allowed, 4);
  /* update_limits_at: a new window length placed at the caller's clock
   * starts every window afresh, so "a" may connect again at once. */
  rt_limits nl = l;
  nl.window_ms = 500;
  CHECK_EQ(rt_limiter_update_limits_at(lim, &nl, 1500), RT_STATUS_OK);
  CHECK_DECISION(rt_check_connection_at(lim, ID("a"), 1500), true, RT_OK, 0);
  rt_limiter_free(lim);

  /* With W = 1000 and L = 1: retry at the end of the next window. */
  l.connections_per_window = 1;
  lim = t_new(&l);
  CHECK_DECISION(rt_connect_at(lim, ID("a"), 5000, &c), true, RT_OK, 0);
  /* p=0 c=1 k=1 L=1: next window needs 1*(1000-e') <= 0: e' = 1000, so
   * 1000 - 0 + 1000 = 2000 ms. */
  CHECK_DECISION(rt_connect_at(lim, ID("a"), 5000, &c), false, RT_CONNECTION_RATE, 2000);
  CHECK_DECISION(rt_connect_at(lim, ID("a"), 6999, &c), false, RT_CONNECTION_RATE, 1);
  CHECK_DECISION(rt_connect_at(lim, ID("a"), 7000, &c), true, RT_OK, 0);
  /* Time going backwards counts as no time passed: still limited. */
  CHECK_EQ(rt_connect_at(lim, ID("a"), 100, &c).reason, RT_CONNECTION_RATE);
  rt_limiter_free(lim);
}

static void concurrency(void) {
  rt_limits l = base();
  l.max_concurrent_connections = 2;
  rt_limiter *lim = t_new(&l);
  rt_conn a = 0, b = 0, c = 0;
  rt_decision d = rt_connect_at(lim, ID("x"), 0, &a);
  CHECK_DECISION(d, true, RT_OK, 0);
  CHECK_EQ(d.limit, 2);
  CHECK_EQ(d.remaining, 1);
  CHECK_EQ(d.current, 1);
  CHECK_DECISION(rt_connect_at(lim, ID("x"), 0, &b), true, RT_OK, 0);
  d = rt_connect_at(lim, ID("x"), 0, &c);
  CHECK_DECISION(d, false, RT_CONCURRENT_CONNECTIONS, 0);
  CHECK_EQ(d.limit, 2);
  CHECK_EQ(d.current, 2);
  CHECK_EQ(c, 0);
  CHECK_EQ(rt_check_connection(lim, ID("x")).reason, RT_CONCURRENT_CONNECTIONS);
  CHECK_EQ(rt_client_connections(lim, ID("x")), 2);
  rt_disconnect(lim, a);
  CHECK_DECISION(rt_connect_at(lim, ID("x"), 0, &c), true, RT_OK, 0);
  /* register_connection does not check (the seed's racy pair). */
  rt_conn r = 0;
  CHECK_EQ(rt_register_connection(lim, ID("x"), &r), RT_STATUS_OK);
  CHECK(r != 0);
  CHECK_EQ(rt_client_connections(lim, ID("x")), 3);
  rt_stats s = t_stats(lim);
  CHECK_EQ(s.denied[RT_CONCURRENT_CONNECTIONS], 2);
  CHECK_EQ(s.active_connections, 3);
  CHECK_EQ(s.unique_clients, 1);
  rt_limiter_free(lim);
}

static void message_size(void) {
  rt_limits l = base();
  l.max_message_size = 100;
  rt_limiter *lim = t_new(&l);
  rt_conn c = 0;
  CHECK(rt_connect_at(lim, ID("m"), 0, &c).allowed);
  CHECK_DECISION(rt_check_message_at(lim, c, 100, 0), true, RT_OK, 0);
  rt_decision d = rt_check_message_at(lim, c, 101, 0);
  CHECK_DECISION(d, false, RT_MESSAGE_TOO_LARGE, RT_RETRY_NEVER);
  CHECK_EQ(d.limit, 100);
  CHECK_EQ(d.current, 101);
  CHECK_DECISION(rt_check_message_at(lim, c, UINT64_MAX, 0), false, RT_MESSAGE_TOO_LARGE, RT_RETRY_NEVER);
  rt_limiter_free(lim);
}

static void message_rate(void) {
  rt_limits l = base();
  l.messages_per_window = 4;
  rt_limiter *lim = t_new(&l);
  rt_conn c = 0;
  CHECK(rt_connect_at(lim, ID("r"), 0, &c).allowed);
  for (int i = 0; i < 4; i++) {
    rt_decision d = rt_check_message_at(lim, c, 10, 100);
    CHECK_DECISION(d, true, RT_OK, 0);
    CHECK_EQ(d.limit, 4);
    CHECK_EQ(d.remaining, 3 - i);
  }
  /* t=100: p=0 c=4 k=1 L=4: next window, 4*(1000-e') <= 3*1000 from
   * e' = 250: 900 + 250 = 1150 ms. */
  rt_decision d = rt_check_message_at(lim, c, 10, 100);
  CHECK_DECISION(d, false, RT_MESSAGE_RATE, 1150);
  CHECK_EQ(d.current, 4);
  CHECK_EQ(d.remaining, 0);
  /* t=1000 (window 1, e=0): p=4 c=0: 4*(1000-e) + 1000 <= 4000 from
   * e = 250, in this window: 250 ms. */
  CHECK_DECISION(rt_check_message_at(lim, c, 10, 1000), false, RT_MESSAGE_RATE, 250);
  CHECK_DECISION(rt_check_message_at(lim, c, 10, 1249), false, RT_MESSAGE_RATE, 1);
  CHECK_DECISION(rt_check_message_at(lim, c, 10, 1250), true, RT_OK, 0);
  /* Now p=4 c=1 at e=250: 4*750 + 2*1000 = 5000 > 4000; passes once
   * 4*(1000-e) <= 2000, e = 500: 250 ms. */
  CHECK_DECISION(rt_check_message_at(lim, c, 10, 1250), false, RT_MESSAGE_RATE, 250);
  rt_stats s = t_stats(lim);
  CHECK_EQ(s.total_messages, 5);
  CHECK_EQ(s.total_bytes, 50);
  CHECK_EQ(s.messages_allowed, 5);
  CHECK_EQ(s.denied[RT_MESSAGE_RATE], 4);
  rt_limiter_free(lim);
}

static void bandwidth(void) {
  rt_limits l = base();
  l.bytes_per_window = 1000;
  rt_limiter *lim = t_new(&l);
  rt_conn c = 0;
  CHECK(rt_connect_at(lim, ID("bw"), 0, &c).allowed);
  rt_decision d = rt_check_message_at(lim, c, 600, 0);
  CHECK_DECISION(d, true, RT_OK, 0);
  CHECK_EQ(d.limit, 1000);
  CHECK_EQ(d.remaining, 400);
  CHECK_EQ(d.current, 600);
  CHECK_DECISION(rt_check_message_at(lim, c, 400, 0), true, RT_OK, 0);
  /* p=0 c=1000 k=1 L=1000: next window, 1000*(1000-e') <= 999*1000 from
   * e' = 1: 1000 + 1 = 1001 ms. */
  d = rt_check_message_at(lim, c, 1, 0);
  CHECK_DECISION(d, false, RT_BANDWIDTH, 1001);
  CHECK_EQ(d.remaining, 0);
  CHECK_EQ(d.current, 1000);
  /* k=500: 1000*(1000-e') <= 500*1000 from e' = 500: 1500 ms. */
  CHECK_DECISION(rt_check_message_at(lim, c, 500, 0), false, RT_BANDWIDTH, 1500);
  CHECK_DECISION(rt_check_message_at(lim, c, 1001, 0), false, RT_BANDWIDTH, RT_RETRY_NEVER);
  CHECK_DECISION(rt_check_message_at(lim, c, 1, 1000), false, RT_BANDWIDTH, 1);
  CHECK_DECISION(rt_check_message_at(lim, c, 1, 1001), true, RT_OK, 0);
  rt_stats s = t_stats(lim);
  CHECK_EQ(s.total_bytes, 1001);
  CHECK_EQ(s.denied[RT_BANDWIDTH], 4);
  rt_limiter_free(lim);
}

/* A fragmented message: the first frame is one message, continuations add
 * bytes only, and the size rule applies to the whole message so far. */
static void continuation(void) {
  rt_limits l = base();
  l.messages_per_window = 1;
  l.bytes_per_window = 1000;
  l.max_message_size = 700;
  rt_limiter *lim = t_new(&l);
  rt_conn c = 0;
  CHECK(rt_connect_at(lim, ID("frag"), 0, &c).allowed);
  CHECK_DECISION(rt_check_message_at(lim, c, 300, 0), true, RT_OK, 0);
  rt_decision d = rt_check_continuation_at(lim, c, 300, 600, 0);
  CHECK_DECISION(d, true, RT_OK, 0);
  CHECK_EQ(d.limit, 1000);
  CHECK_EQ(d.remaining, 400);
  d = rt_check_continuation_at(lim, c, 200, 800, 0);
  CHECK_DECISION(d, false, RT_MESSAGE_TOO_LARGE, RT_RETRY_NEVER);
  CHECK_EQ(d.current, 800);
  /* The message rate (1) is full (p=0 c=1 k=1 L=1: the message passes
   * once the previous window has slid out, 2000 ms), yet continuations
   * pass on bytes. */
  CHECK_DECISION(rt_check_message_at(lim, c, 1, 0), false, RT_MESSAGE_RATE, 2000);
  CHECK_DECISION(rt_check_continuation_at(lim, c, 100, 700, 0), true, RT_OK, 0);
  CHECK_DECISION(rt_check_continuation_at(lim, c, 10, 9, 0), false, RT_INVALID_ARGUMENT, 0);
  CHECK_DECISION(rt_check_continuation_at(lim, 0, 1, 1, 0), false, RT_UNKNOWN_CONNECTION, 0);
  CHECK_DECISION(rt_check_continuation(NULL, c, 1, 1), false, RT_INVALID_ARGUMENT, 0);
  CHECK_DECISION(rt_check_continuation(lim, c, 1, 701), false, RT_MESSAGE_TOO_LARGE, RT_RETRY_NEVER);
  rt_connection_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_EQ(rt_limiter_connection_info(lim, c, &info), RT_STATUS_OK);
  CHECK_EQ(info.message_count, 1);
  CHECK_EQ(info.byte_count, 700);
  rt_limiter_free(lim);
}

static void client_limits(void) {
  rt_limits l = base();
  l.client_messages_per_window = 3;
  rt_limiter *lim = t_new(&l);
  rt_conn a = 0, b = 0, other = 0;
  CHECK(rt_connect_at(lim, ID("cl"), 0, &a).allowed);
  CHECK(rt_connect_at(lim, ID("cl"), 0, &b).allowed);
  CHECK(rt_connect_at(lim, ID("other"), 0, &other).allowed);
  CHECK_DECISION(rt_check_message_at(lim, a, 1, 0), true, RT_OK, 0);
  CHECK_DECISION(rt_check_message_at(lim, b, 1, 0), true, RT_OK, 0);
  CHECK_DECISION(rt_check_message_at(lim, a, 1, 0), true, RT_OK, 0);
  /* p=0 c=3 k=1 L=3: next window, 3*(1000-e') <= 2000 from e' = 334
   * (floor(2000/3) = 666): 1000 + 334 = 1334 ms. */
  rt_decision d = rt_check_message_at(lim, b, 1, 0);
  CHECK_DECISION(d, false, RT_CLIENT_MESSAGE_RATE, 1334);
  CHECK_EQ(d.limit, 3);
  CHECK_DECISION(rt_check_message_at(lim, other, 1, 0), true, RT_OK, 0);
  CHECK_DECISION(rt_check_message_at(lim, a, 1, 1333), false, RT_CLIENT_MESSAGE_RATE, 1);
  CHECK_DECISION(rt_check_message_at(lim, a, 1, 1334), true, RT_OK, 0);
  rt_limiter_free(lim);

  l = base();
  l.client_bytes_per_window = 100;
  lim = t_new(&l);
  CHECK(rt_connect_at(lim, ID("cl"), 0, &a).allowed);
  CHECK(rt_connect_at(lim, ID("cl"), 0, &b).allowed);
  CHECK_DECISION(rt_check_message_at(lim, a, 60, 0), true, RT_OK, 0);
  CHECK_DECISION(rt_check_message_at(lim, b, 40, 0), true, RT_OK, 0);
  /* p=0 c=100 k=1 L=100: 100*(1000-e') <= 99*1000 from e' = 10: 1010. */
  CHECK_DECISION(rt_check_message_at(lim, b, 1, 0), false, RT_CLIENT_BANDWIDTH, 1010);
  CHECK_DECISION(rt_check_message_at(lim, a, 101, 0), false, RT_CLIENT_BANDWIDTH, RT_RETRY_NEVER);
  CHECK_DECISION(rt_check_message_at(lim, b, 1, 1010), true, RT_OK, 0);
  rt_limiter_free(lim);

  /* Keys: rooms and channels share the client limits. */
  l = base();
  l.client_messages_per_window = 2;
  l.client_bytes_per_window = 1000;
  lim = t_new(&l);
  CHECK_DECISION(rt_check_key_at(lim, ID("room:1"), 10, 0), true, RT_OK, 0);
  CHECK_DECISION(rt_check_key_at(lim, ID("room:1"), 10, 0), true, RT_OK, 0);
  /* p=0 c=2 k=1 L=2: 2*(1000-e') <= 1000 from e' = 500: 1500 ms. */
  CHECK_DECISION(rt_check_key_at(lim, ID("room:1"), 10, 0), false, RT_CLIENT_MESSAGE_RATE, 1500);
  CHECK_DECISION(rt_check_key_at(lim, ID("room:2"), 1000, 0), true, RT_OK, 0);
  CHECK_DECISION(rt_check_key_at(lim, ID("room:3"), 1001, 0), false, RT_CLIENT_BANDWIDTH, RT_RETRY_NEVER);
  CHECK_DECISION(rt_check_key_at(lim, ID("room:1"), 10, 1500), true, RT_OK, 0);
  /* The plain form reads the real clock; the empty key is a key too. */
  CHECK_EQ(rt_check_key(lim, NULL, 0, 1).reason, RT_OK);
  rt_stats s = t_stats(lim);
  CHECK_EQ(s.denied[RT_CLIENT_MESSAGE_RATE], 1);
  CHECK_EQ(s.denied[RT_CLIENT_BANDWIDTH], 1);
  CHECK_EQ(s.messages_allowed, 5);
  CHECK_EQ(s.total_messages, 0); /* key checks are not connection messages */
  rt_limiter_free(lim);

  /* No client limits: every key check is allowed. */
  l = base();
  lim = t_new(&l);
  for (int i = 0; i < 100; i++) CHECK_EQ(rt_check_key_at(lim, ID("k"), 1u << 30, 0).allowed, true);
  rt_limiter_free(lim);
}

enum { FILL_MAX = 64 };

/* Connects new clients "c0", "c1", ... (keeping every connection live)
 * until a connect is not a plain allow; returns how many were, and the
 * decision and handle of the first one that was not. */
static int fill_table(rt_limiter *lim, rt_conn *conns, rt_decision *last, rt_conn *last_conn) {
  char id[16];
  for (int i = 0; i < FILL_MAX; i++) {
    int n = snprintf(id, sizeof id, "c%d", i);
    rt_conn c = 0;
    rt_decision d = rt_connect_at(lim, (const uint8_t *)id, (size_t)n, 0, &c);
    if (!d.allowed || d.reason != RT_OK) {
      *last = d;
      *last_conn = c;
      return i;
    }
    conns[i] = c;
  }
  return FILL_MAX;
}

static void table_full(void) {
  rt_limits l = base();
  l.max_clients = 4;
  l.max_connections = 128;
  rt_limiter *lim = t_new(&l);
  rt_conn conns[FILL_MAX] = {0};
  rt_decision d;
  memset(&d, 0, sizeof d);
  rt_conn c = 1;
  /* max_clients ids always fit; the table is bounded, so it fills. */
  int n = fill_table(lim, conns, &d, &c);
  CHECK(n >= 4 && n < FILL_MAX);
  CHECK_DECISION(d, false, RT_TABLE_FULL, 0);
  CHECK_EQ(c, 0);
  c = 1;
  CHECK_DECISION(rt_connect_at(lim, ID("newcomer"), 0, &c), false, RT_TABLE_FULL, 0);
  CHECK_EQ(c, 0);
  /* Known clients still connect. */
  CHECK_DECISION(rt_connect_at(lim, ID("c0"), 0, &c), true, RT_OK, 0);
  rt_conn r = 5;
  CHECK_EQ(rt_register_connection(lim, ID("newcomer2"), &r), RT_STATUS_TABLE_FULL);
  CHECK_EQ(r, 5);
  rt_stats s = t_stats(lim);
  CHECK_EQ(s.denied[RT_TABLE_FULL], 3);
  CHECK_EQ(s.tracked_clients, (uint64_t)n);
  CHECK_EQ(s.max_clients, 4);
  CHECK_EQ(s.untracked_allowed, 0);
  CHECK_EQ(s.active_connections, (uint64_t)n + 1);
  rt_limiter_free(lim);

  /* Fail open: allowed untracked, reason TABLE_FULL, counted. */
  l.flags = RT_FLAG_FAIL_OPEN;
  l.messages_per_window = 2;
  lim = t_new(&l);
  c = 0;
  n = fill_table(lim, conns, &d, &c);
  CHECK(n >= 4 && n < FILL_MAX);
  CHECK_DECISION(d, true, RT_TABLE_FULL, 0);
  CHECK(c != 0);
  rt_conn c2 = 0;
  CHECK_DECISION(rt_connect_at(lim, ID("newcomer"), 0, &c2), true, RT_TABLE_FULL, 0);
  CHECK(c2 != 0 && c2 != c);
  /* The untracked connection still has its own message limits. */
  CHECK_DECISION(rt_check_message_at(lim, c, 1, 0), true, RT_OK, 0);
  CHECK_DECISION(rt_check_message_at(lim, c, 1, 0), true, RT_OK, 0);
  CHECK_EQ(rt_check_message_at(lim, c, 1, 0).reason, RT_MESSAGE_RATE);
  rt_connection_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_EQ(rt_limiter_connection_info(lim, c, &info), RT_STATUS_OK);
  CHECK_EQ(info.client_id_len, 0);
  CHECK_EQ(rt_register_connection(lim, ID("newcomer2"), &r), RT_STATUS_OK);
  s = t_stats(lim);
  CHECK_EQ(s.untracked_allowed, 3);
  CHECK_EQ(s.denied[RT_TABLE_FULL], 0);
  CHECK_EQ(s.tracked_clients, (uint64_t)n);
  CHECK_EQ(s.limits.flags, RT_FLAG_FAIL_OPEN);
  rt_disconnect(lim, c);
  rt_disconnect(lim, c2);
  rt_disconnect(lim, r);
  rt_limiter_free(lim);

  /* Dry run: a full table is a would-be denial, allowed untracked (as with
   * fail open) and counted as one; nothing is denied. */
  l.flags = RT_FLAG_DRY_RUN;
  l.client_messages_per_window = 5;
  lim = t_new(&l);
  c = 0;
  n = fill_table(lim, conns, &d, &c);
  CHECK(n >= 4 && n < FILL_MAX);
  CHECK_DECISION(d, true, RT_TABLE_FULL, 0);
  CHECK(c != 0);
  CHECK_DECISION(rt_check_message_at(lim, c, 1, 0), true, RT_OK, 0);
  CHECK_DECISION(rt_check_key_at(lim, ID("room:new"), 1, 0), true, RT_TABLE_FULL, 0);
  s = t_stats(lim);
  CHECK_EQ(s.untracked_allowed, 2);
  CHECK_EQ(s.dry_run_denied, 2);
  CHECK_EQ(s.denied[RT_TABLE_FULL], 0);
  rt_disconnect(lim, c);
  rt_limiter_free(lim);
}

static void unknown_and_invalid(void) {
  rt_limits l = base();
  rt_limiter *lim = t_new(&l);
  rt_conn c = 0;
  CHECK(rt_connect_at(lim, ID("u"), 0, &c).allowed);
  rt_disconnect(lim, c);
  CHECK_DECISION(rt_check_message_at(lim, c, 1, 0), false, RT_UNKNOWN_CONNECTION, 0);
  CHECK_DECISION(rt_check_message_at(lim, 0, 1, 0), false, RT_UNKNOWN_CONNECTION, 0);
  CHECK_DECISION(rt_connect_at(lim, NULL, 3, 0, &c), false, RT_INVALID_ARGUMENT, 0);
  CHECK_DECISION(rt_connect_at(NULL, ID("u"), 0, &c), false, RT_INVALID_ARGUMENT, 0);
  rt_stats s = t_stats(lim);
  CHECK_EQ(s.denied[RT_UNKNOWN_CONNECTION], 1); /* handle 0 is refused at the boundary */
  rt_limiter_free(lim);
}

static int dry_calls;
static rt_reason dry_last;

static void dry_cb(const rt_violation *v, void *user_data) {
  (void)user_data;
  dry_calls++;
  dry_last = v->reason;
}

static void dry_run(void) {
  rt_limits l = base();
  l.flags = RT_FLAG_DRY_RUN;
  l.connections_per_window = 2;
  l.messages_per_window = 1;
  l.max_message_size = 100;
  rt_limiter *lim = t_new(&l);
  rt_set_violation_callback(lim, dry_cb, NULL);
  rt_conn c1 = 0, c2 = 0, c3 = 0, c4 = 0;
  CHECK_DECISION(rt_connect_at(lim, ID("d"), 0, &c1), true, RT_OK, 0);
  CHECK_DECISION(rt_connect_at(lim, ID("d"), 0, &c2), true, RT_OK, 0);
  /* Would be denied: p=0 c=2 k=1 L=2: 1500 ms. Allowed and counted. */
  CHECK_DECISION(rt_connect_at(lim, ID("d"), 0, &c3), true, RT_CONNECTION_RATE, 1500);
  CHECK(c3 != 0);
  CHECK_EQ(dry_calls, 1);
  CHECK_EQ(dry_last, RT_CONNECTION_RATE);
  /* Counted: now c=3, 3*(1000-e') <= 1000 from e' = 667: 1667 ms. */
  CHECK_DECISION(rt_connect_at(lim, ID("d"), 0, &c4), true, RT_CONNECTION_RATE, 1667);
  CHECK_EQ(rt_client_connections(lim, ID("d")), 4);

  CHECK_DECISION(rt_check_message_at(lim, c1, 10, 0), true, RT_OK, 0);
  /* p=0 c=1 k=1 L=1: 2000 ms; allowed, counted. */
  CHECK_DECISION(rt_check_message_at(lim, c1, 10, 0), true, RT_MESSAGE_RATE, 2000);
  CHECK_DECISION(rt_check_message_at(lim, c2, 101, 0), true, RT_MESSAGE_TOO_LARGE, RT_RETRY_NEVER);
  CHECK_EQ(dry_last, RT_MESSAGE_TOO_LARGE);

  rt_stats s = t_stats(lim);
  CHECK_EQ(s.dry_run_denied, 4);
  CHECK_EQ(s.denied[RT_CONNECTION_RATE], 0);
  CHECK_EQ(s.connections_allowed, 4);
  CHECK_EQ(s.total_messages, 3);
  CHECK_EQ(s.total_bytes, 121);
  CHECK_EQ(s.limits.flags, RT_FLAG_DRY_RUN);

  rt_violation v[8];
  size_t n = rt_drain_violations(lim, v, 8);
  CHECK_EQ(n, 4);
  CHECK_EQ(v[0].reason, RT_CONNECTION_RATE);
  CHECK_EQ(v[0].client_id_len, 1);
  CHECK(v[0].client_id[0] == 'd');
  CHECK_EQ(v[0].conn, c3);
  CHECK_EQ(v[0].retry_after_ms, 1500);
  CHECK_EQ(v[2].reason, RT_MESSAGE_RATE);
  CHECK_EQ(v[2].conn, c1);
  CHECK_EQ(v[3].reason, RT_MESSAGE_TOO_LARGE);
  CHECK_EQ(v[3].size, 101);
  CHECK_EQ(v[3].limit, 100);
  rt_limiter_free(lim);
}

static void update_limits(void) {
  rt_limits l = base();
  l.max_message_size = 1000;
  l.messages_per_window = 100;
  rt_limiter *lim = t_new(&l);
  rt_conn c = 0;
  CHECK(rt_connect_at(lim, ID("up"), 0, &c).allowed);
  CHECK_DECISION(rt_check_message_at(lim, c, 500, 0), true, RT_OK, 0);
  CHECK_DECISION(rt_check_message_at(lim, c, 500, 0), true, RT_OK, 0);

  rt_limits smaller = l;
  smaller.max_message_size = 100;
  smaller.messages_per_window = 2;
  CHECK_EQ(rt_limiter_update_limits(lim, &smaller), RT_STATUS_OK);
  rt_decision d = rt_check_message_at(lim, c, 500, 0);
  CHECK_DECISION(d, false, RT_MESSAGE_TOO_LARGE, RT_RETRY_NEVER);
  CHECK_EQ(d.limit, 100);
  /* The two messages already sent count against the new limit of 2:
   * p=0 c=2 k=1 L=2: 1500 ms. */
  CHECK_DECISION(rt_check_message_at(lim, c, 50, 0), false, RT_MESSAGE_RATE, 1500);
  rt_stats s = t_stats(lim);
  CHECK_EQ(s.limits.max_message_size, 100);
  CHECK_EQ(s.limits.messages_per_window, 2);

  /* Invalid updates change nothing. */
  rt_limits bad = smaller;
  bad.window_ms = 0;
  CHECK_EQ(rt_limiter_update_limits(lim, &bad), RT_STATUS_INVALID_LIMITS);
  bad = smaller;
  bad.max_clients = smaller.max_clients * 2;
  CHECK_EQ(rt_limiter_update_limits(lim, &bad), RT_STATUS_INVALID_ARGUMENT);
  bad = smaller;
  bad.struct_size = 3;
  CHECK_EQ(rt_limiter_update_limits(lim, &bad), RT_STATUS_INVALID_ARGUMENT);
  bad = smaller;
  bad.flags = 8;
  CHECK_EQ(rt_limiter_update_limits(lim, &bad), RT_STATUS_INVALID_LIMITS);
  s = t_stats(lim);
  CHECK_EQ(s.limits.max_message_size, 100);

  /* Flags change at run time too: dry run on, then the same request passes. */
  rt_limits dry = smaller;
  dry.flags = RT_FLAG_DRY_RUN;
  CHECK_EQ(rt_limiter_update_limits(lim, &dry), RT_STATUS_OK);
  CHECK_DECISION(rt_check_message_at(lim, c, 500, 0), true, RT_MESSAGE_TOO_LARGE, RT_RETRY_NEVER);
  rt_limiter_free(lim);
}

static void stats_and_info(void) {
  rt_limits l = base();
  l.max_concurrent_connections = 5;
  l.messages_per_window = 10;
  rt_limiter *lim = t_new(&l);
  rt_conn a = 0, b = 0, c = 0;
  CHECK(rt_connect_at(lim, ID("client-a"), 100, &a).allowed);
  CHECK(rt_connect_at(lim, ID("client-a"), 100, &b).allowed);
  CHECK(rt_connect_at(lim, ID("client-b"), 100, &c).allowed);
  CHECK(rt_check_message_at(lim, a, 10, 200).allowed);
  CHECK(rt_check_message_at(lim, a, 20, 300).allowed);
  CHECK(rt_check_message_at(lim, c, 5, 300).allowed);
  CHECK_EQ(rt_check_key_at(lim, ID("room"), 1, 300).allowed, true);

  rt_connection_info info;
  memset(&info, 0xEE, sizeof info);
  info.struct_size = sizeof info;
  CHECK_EQ(rt_limiter_connection_info(lim, a, &info), RT_STATUS_OK);
  CHECK_EQ(info.struct_size, sizeof info);
  CHECK_EQ(info.client_id_len, 8);
  CHECK(memcmp(info.client_id, "client-a", 8) == 0);
  CHECK_EQ(info.connected_at_ms, 100);
  CHECK_EQ(info.last_message_at_ms, 300);
  CHECK_EQ(info.message_count, 2);
  CHECK_EQ(info.byte_count, 30);

  rt_stats s = t_stats(lim);
  CHECK_EQ(s.struct_size, sizeof s);
  CHECK_EQ(s.active_connections, 3);
  CHECK_EQ(s.unique_clients, 2);
  CHECK_EQ(s.total_messages, 3);
  CHECK_EQ(s.total_bytes, 35);
  CHECK_EQ(s.connections_allowed, 3);
  CHECK_EQ(s.messages_allowed, 4);
  for (rt_reason r = 0; r < RT_REASON_COUNT; r++) CHECK_EQ(s.denied[r], 0);
  CHECK_EQ(s.tracked_clients, 2); /* the room has no client limits: untracked */
  CHECK_EQ(s.max_clients, 64);
  CHECK_EQ(s.max_connections, 256);
  CHECK_EQ(s.violations_dropped, 0);
  CHECK_EQ(s.dry_run_denied, 0);
  CHECK_EQ(s.untracked_allowed, 0);
  CHECK_EQ(s.limits.struct_size, sizeof(rt_limits));
  CHECK_EQ(s.limits.window_ms, 1000);
  CHECK_EQ(s.limits.max_concurrent_connections, 5);
  CHECK_EQ(s.limits.messages_per_window, 10);
  CHECK_EQ(s.limits.reserved, 0);

  /* Closed connections keep counting in the totals. */
  rt_disconnect(lim, a);
  s = t_stats(lim);
  CHECK_EQ(s.active_connections, 2);
  CHECK_EQ(s.total_messages, 3);
  CHECK_EQ(s.total_bytes, 35);
  rt_disconnect(lim, b);
  rt_disconnect(lim, c);
  s = t_stats(lim);
  CHECK_EQ(s.active_connections, 0);
  CHECK_EQ(s.unique_clients, 0);
  CHECK_EQ(rt_reap_dead(lim), 0);
  rt_limiter_free(lim);
}

int main(void) {
  connection_rate();
  concurrency();
  message_size();
  message_rate();
  bandwidth();
  continuation();
  client_limits();
  table_full();
  unknown_and_invalid();
  dry_run();
  update_limits();
  stats_and_info();
  return t_done("test_decisions");
}
