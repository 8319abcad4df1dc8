/*
 * Violations: the synchronous callback (with user_data), the bounded ring
 * (drain after denials, drops counted when the 1024-slot ring overflows),
 * and the Prometheus text.
 */
#include <stdlib.h>

#include "harness.h"

struct seen {
  int calls;
  rt_violation last;
  rt_reason reasons[16];
};

static void on_violation(const rt_violation *v, void *user_data) {
  struct seen *s = user_data;
  if (s->calls < 16) s->reasons[s->calls] = v->reason;
  s->calls++;
  s->last = *v;
}

static void callback_and_ring(void) {
  rt_limits l = t_limits();
  l.window_ms = 1000;
  l.connections_per_window = 1;
  l.messages_per_window = 1;
  l.max_message_size = 10;
  rt_limiter *lim = t_new(&l);
  struct seen seen;
  memset(&seen, 0, sizeof seen);
  rt_set_violation_callback(lim, on_violation, &seen);

  rt_conn c = 0, c2 = 0;
  CHECK(rt_connect_at(lim, ID("client-1"), 10, &c).allowed);
  CHECK_EQ(seen.calls, 0);
  CHECK_DECISION(rt_connect_at(lim, ID("client-1"), 20, &c2), false, RT_CONNECTION_RATE, 1980);
  CHECK_EQ(seen.calls, 1);
  CHECK_EQ(seen.last.reason, RT_CONNECTION_RATE);
  CHECK_EQ(seen.last.client_id_len, 8);
  CHECK(memcmp(seen.last.client_id, "client-1", 8) == 0);
  CHECK_EQ(seen.last.conn, 0);
  CHECK_EQ(seen.last.limit, 1);
  CHECK_EQ(seen.last.current, 1);
  CHECK_EQ(seen.last.size, 1);
  CHECK_EQ(seen.last.retry_after_ms, 1980);
  CHECK_EQ(seen.last.at_ms, 20);

  CHECK(rt_check_message_at(lim, c, 5, 30).allowed);
  CHECK_EQ(rt_check_message_at(lim, c, 5, 40).reason, RT_MESSAGE_RATE);
  CHECK_EQ(rt_check_message_at(lim, c, 11, 50).reason, RT_MESSAGE_TOO_LARGE);
  /* Unknown handles and invalid arguments are not violations. */
  CHECK_EQ(rt_check_message_at(lim, c + 1, 5, 60).reason, RT_UNKNOWN_CONNECTION);
  CHECK_EQ(rt_connect_at(lim, NULL, 1, 60, &c2).reason, RT_INVALID_ARGUMENT);
  CHECK_EQ(seen.calls, 3);
  CHECK_EQ(seen.reasons[1], RT_MESSAGE_RATE);
  CHECK_EQ(seen.reasons[2], RT_MESSAGE_TOO_LARGE);
  CHECK_EQ(seen.last.conn, c);
  CHECK_EQ(seen.last.size, 11);
  CHECK_EQ(seen.last.retry_after_ms, RT_RETRY_NEVER);

  /* Drain in pieces, oldest first; each record once. */
  rt_violation v[8];
  memset(v, 0, sizeof v);
  CHECK_EQ(rt_drain_violations(lim, v, 2), 2);
  CHECK_EQ(v[0].reason, RT_CONNECTION_RATE);
  CHECK_EQ(v[0].at_ms, 20);
  CHECK_EQ(v[1].reason, RT_MESSAGE_RATE);
  CHECK_EQ(v[1].conn, c);
  CHECK_EQ(v[1].limit, 1);
  CHECK_EQ(rt_drain_violations(lim, v, 8), 1);
  CHECK_EQ(v[0].reason, RT_MESSAGE_TOO_LARGE);
  CHECK_EQ(v[0].size, 11);
  CHECK(memcmp(v[0].client_id, "client-1", 8) == 0);
  CHECK_EQ(rt_drain_violations(lim, v, 8), 0);

  /* Replacing and removing the callback. */
  struct seen other;
  memset(&other, 0, sizeof other);
  rt_set_violation_callback(lim, on_violation, &other);
  CHECK_EQ(rt_check_message_at(lim, c, 11, 70).reason, RT_MESSAGE_TOO_LARGE);
  CHECK_EQ(other.calls, 1);
  CHECK_EQ(seen.calls, 3);
  rt_set_violation_callback(lim, NULL, NULL);
  CHECK_EQ(rt_check_message_at(lim, c, 11, 80).reason, RT_MESSAGE_TOO_LARGE);
  CHECK_EQ(other.calls, 1);
  CHECK_EQ(rt_drain_violations(lim, v, 8), 2); /* the ring still records */

  /* A long id: first 40 bytes kept, full length reported. */
  char longid[100];
  memset(longid, 'L', sizeof longid);
  CHECK(rt_connect_at(lim, (const uint8_t *)longid, sizeof longid, 100, &c2).allowed);
  CHECK_EQ(rt_connect_at(lim, (const uint8_t *)longid, sizeof longid, 100, &c2).reason,
           RT_CONNECTION_RATE);
  CHECK_EQ(rt_drain_violations(lim, v, 8), 1);
  CHECK_EQ(v[0].client_id_len, 100);
  CHECK(memcmp(v[0].client_id, longid, 40) == 0);

  rt_stats s = t_stats(lim);
  CHECK_EQ(s.violations_dropped, 0);
  rt_limiter_free(lim);
}

static void ring_overflow(void) {
  rt_limits l = t_limits();
  l.connections_per_window = 1;
  rt_limiter *lim = t_new(&l);
  struct seen seen;
  memset(&seen, 0, sizeof seen);
  rt_set_violation_callback(lim, on_violation, &seen);
  rt_conn c = 0;
  CHECK(rt_connect_at(lim, ID("flood"), 0, &c).allowed);
  const int denials = 1100;
  int denied = 0;
  for (int i = 0; i < denials; i++) denied += !rt_connect_at(lim, ID("flood"), 0, &c).allowed;
  CHECK_EQ(denied, denials);
  CHECK_EQ(seen.calls, denials); /* the callback never drops */
  rt_stats s = t_stats(lim);
  CHECK_EQ(s.violations_dropped, denials - 1024);
  CHECK_EQ(s.denied[RT_CONNECTION_RATE], denials);

  rt_violation *v = calloc(2048, sizeof *v);
  size_t total = 0, n;
  while ((n = rt_drain_violations(lim, v + total, 100)) > 0) total += n;
  CHECK_EQ(total, 1024);
  int all_flood = 1;
  for (size_t i = 0; i < total; i++)
    all_flood &= v[i].reason == RT_CONNECTION_RATE && v[i].client_id_len == 5;
  CHECK(all_flood);
  /* Room again: new denials are recorded, not dropped. */
  CHECK(!rt_connect_at(lim, ID("flood"), 0, &c).allowed);
  CHECK_EQ(rt_drain_violations(lim, v, 2048), 1);
  s = t_stats(lim);
  CHECK_EQ(s.violations_dropped, denials - 1024);
  free(v);
  rt_limiter_free(lim);
}

static void prometheus(void) {
  rt_limits l = t_limits();
  l.connections_per_window = 1;
  rt_limiter *lim = t_new(&l);
  rt_conn c = 0;
  CHECK(rt_connect_at(lim, ID("p"), 0, &c).allowed);
  CHECK(!rt_connect_at(lim, ID("p"), 0, &c).allowed);

  size_t need = rt_stats_prometheus(lim, NULL, 0);
  CHECK(need > 100);
  char *buf = malloc(need + 1);
  memset(buf, 'x', need + 1);
  CHECK_EQ(rt_stats_prometheus(lim, buf, 0), need);
  CHECK(buf[0] == 'x');
  CHECK_EQ(rt_stats_prometheus(lim, buf, 1), need);
  CHECK(buf[0] == '\0' && buf[1] == 'x');
  CHECK_EQ(rt_stats_prometheus(lim, buf, 10), need);
  CHECK_EQ(strlen(buf), 9);
  CHECK(buf[10] == 'x');
  CHECK_EQ(rt_stats_prometheus(lim, buf, need), need); /* one byte short */
  CHECK_EQ(strlen(buf), need - 1);
  CHECK_EQ(rt_stats_prometheus(lim, buf, need + 1), need);
  CHECK_EQ(strlen(buf), need);
  CHECK(strstr(buf, "# TYPE ratethrottle_denied_total counter") != NULL);
  CHECK(strstr(buf, "ratethrottle_denied_total{reason=\"connection_rate_exceeded\"} 1\n") != NULL);
  CHECK(strstr(buf, "ratethrottle_active_connections 1\n") != NULL);
  CHECK(strstr(buf, "ratethrottle_connections_allowed_total 1\n") != NULL);
  free(buf);
  rt_limiter_free(lim);
}

int main(void) {
  callback_and_ring();
  ring_overflow();
  prometheus();
  return t_done("test_violations");
}
