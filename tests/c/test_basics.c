/*
 * The C ABI's edges: version and strings, limits and struct_size, NULL for
 * every pointer argument of every function, ids (empty, (NULL, n), 10000
 * bytes, embedded NUL), stale and forged handles, huge sizes and times.
 */
#include <stdlib.h>

#include "harness.h"

static void strings(void) {
  CHECK(rt_version() != NULL && strlen(rt_version()) > 0);
  CHECK_STR(rt_status_str(RT_STATUS_OK), "ok");
  CHECK_STR(rt_status_str(RT_STATUS_NULL_ARGUMENT), "null argument");
  CHECK_STR(rt_status_str(RT_STATUS_INVALID_ARGUMENT), "invalid argument");
  CHECK_STR(rt_status_str(RT_STATUS_INVALID_LIMITS), "invalid limits");
  CHECK_STR(rt_status_str(RT_STATUS_OUT_OF_MEMORY), "out of memory");
  CHECK_STR(rt_status_str(RT_STATUS_REGION_TOO_SMALL), "region too small");
  CHECK_STR(rt_status_str(RT_STATUS_INCOMPATIBLE_REGION), "incompatible region");
  CHECK_STR(rt_status_str(RT_STATUS_UNKNOWN_CONNECTION), "unknown connection");
  CHECK_STR(rt_status_str(RT_STATUS_TABLE_FULL), "table full");
  CHECK_STR(rt_status_str(RT_STATUS_PANIC), "internal error (panic)");
  CHECK_STR(rt_status_str(RT_STATUS_IO_ERROR), "i/o error");
  CHECK_STR(rt_status_str(11), "unknown");
  CHECK_STR(rt_status_str(99), "unknown");
  CHECK_STR(rt_status_str(UINT32_MAX), "unknown");

  static const char *reasons[RT_REASON_COUNT] = {
      "ok", "connection_rate_exceeded", "too_many_connections",
      "message_too_large", "rate_limit_exceeded", "bandwidth_exceeded",
      "client_rate_limit_exceeded", "client_bandwidth_exceeded", "table_full",
      "connection_not_found", "invalid_argument"};
  static const char *types[RT_REASON_COUNT] = {
      "none", "connection_rate", "concurrent_connections", "message_size",
      "message_rate", "bandwidth", "client_message_rate", "client_bandwidth",
      "table_full", "unknown_connection", "invalid_argument"};
  for (rt_reason r = 0; r < RT_REASON_COUNT; r++) {
    CHECK_STR(rt_reason_str(r), reasons[r]);
    CHECK_STR(rt_violation_type_str(r), types[r]);
  }
  CHECK_STR(rt_reason_str(RT_REASON_COUNT), "unknown");
  CHECK_STR(rt_reason_str(99), "unknown");
  CHECK_STR(rt_reason_str(UINT32_MAX), "unknown");
  CHECK_STR(rt_violation_type_str(RT_REASON_COUNT), "unknown");
  CHECK_STR(rt_violation_type_str(UINT32_MAX), "unknown");
}

static void limits(void) {
  rt_limits l;
  memset(&l, 0xAB, sizeof l);
  rt_limits_default(&l);
  CHECK_EQ(l.struct_size, sizeof(rt_limits));
  CHECK_EQ(l.window_ms, 60000);
  CHECK_EQ(l.connections_per_window, 60);
  CHECK_EQ(l.max_concurrent_connections, 10);
  CHECK_EQ(l.messages_per_window, 1000);
  CHECK_EQ(l.bytes_per_window, 0);
  CHECK_EQ(l.max_message_size, 65536);
  CHECK_EQ(l.client_messages_per_window, 0);
  CHECK_EQ(l.client_bytes_per_window, 0);
  CHECK_EQ(l.max_clients, 65536);
  CHECK_EQ(l.max_connections, 65536);
  CHECK_EQ(l.flags, 0);
  CHECK_EQ(l.reserved, 0);
  CHECK_EQ(rt_limits_validate(&l), RT_STATUS_OK);
  CHECK(rt_region_size(&l) > 0);

  char buf[200];
  memset(buf, 'x', sizeof buf);
  CHECK_EQ(rt_limits_error(&l, buf, sizeof buf), 0);
  CHECK_STR(buf, "");

  /* An out-of-range field is named, with its range. */
  rt_limits bad = l;
  bad.window_ms = 0;
  CHECK_EQ(rt_limits_validate(&bad), RT_STATUS_INVALID_LIMITS);
  size_t n = rt_limits_error(&bad, buf, sizeof buf);
  CHECK_STR(buf, "invalid window_ms: 0 is out of range 1..=4294967295");
  CHECK_EQ(n, strlen(buf));
  CHECK_EQ(rt_region_size(&bad), 0);
  rt_limiter *sentinel = (rt_limiter *)(void *)buf;
  rt_limiter *lim = sentinel;
  CHECK_EQ(rt_limiter_new(&bad, &lim), RT_STATUS_INVALID_LIMITS);
  CHECK(lim == sentinel); /* out-params are written only on success */

  bad = l;
  bad.messages_per_window = 1u << 18;
  CHECK_EQ(rt_limits_validate(&bad), RT_STATUS_INVALID_LIMITS);
  rt_limits_error(&bad, buf, sizeof buf);
  CHECK(strstr(buf, "messages_per_window") != NULL);
  CHECK(strstr(buf, "0..=262143") != NULL);
  bad = l;
  bad.max_clients = 0;
  CHECK_EQ(rt_limits_validate(&bad), RT_STATUS_INVALID_LIMITS);
  bad = l;
  bad.client_bytes_per_window = UINT64_MAX;
  CHECK_EQ(rt_limits_validate(&bad), RT_STATUS_INVALID_LIMITS);

  /* Flags: the two known bits, and unknown ones. */
  bad = l;
  bad.flags = RT_FLAG_FAIL_OPEN | RT_FLAG_DRY_RUN;
  CHECK_EQ(rt_limits_validate(&bad), RT_STATUS_OK);
  bad.flags = 4;
  CHECK_EQ(rt_limits_validate(&bad), RT_STATUS_INVALID_LIMITS);
  rt_limits_error(&bad, buf, sizeof buf);
  CHECK(strstr(buf, "flags") != NULL);
  bad.flags = 0x80000000u;
  CHECK_EQ(rt_limits_validate(&bad), RT_STATUS_INVALID_LIMITS);
  bad = l;
  bad.reserved = 1;
  CHECK_EQ(rt_limits_validate(&bad), RT_STATUS_INVALID_ARGUMENT);

  /* rt_limits_error: snprintf semantics with cap 0, 1 and short. */
  bad = l;
  bad.window_ms = 0;
  size_t full = rt_limits_error(&bad, NULL, 0);
  CHECK_EQ(full, strlen("invalid window_ms: 0 is out of range 1..=4294967295"));
  memset(buf, 'x', sizeof buf);
  CHECK_EQ(rt_limits_error(&bad, buf, 0), full);
  CHECK(buf[0] == 'x');
  CHECK_EQ(rt_limits_error(&bad, buf, 1), full);
  CHECK(buf[0] == '\0' && buf[1] == 'x');
  CHECK_EQ(rt_limits_error(&bad, buf, 8), full);
  CHECK_STR(buf, "invalid");
  CHECK(buf[8] == 'x');
  CHECK_EQ(rt_limits_error(&bad, NULL, 50), full); /* NULL buf: size query */
  CHECK_EQ(rt_limits_error(NULL, buf, sizeof buf), strlen("limits pointer is NULL"));
  CHECK_STR(buf, "limits pointer is NULL");
}

/* struct_size smaller, larger with a zero tail, larger with a non-zero tail. */
static void struct_sizes(void) {
  rt_limits defaults;
  rt_limits_default(&defaults);

  /* An older header whose struct ends after messages_per_window (20 bytes).
   * The bytes after struct_size hold garbage that must never be read. */
  rt_limits older;
  memset(&older, 0xFF, sizeof older);
  older.struct_size = 20;
  older.window_ms = 1000;
  older.connections_per_window = 3;
  older.max_concurrent_connections = 2;
  older.messages_per_window = 5;
  CHECK_EQ(rt_limits_validate(&older), RT_STATUS_OK);
  CHECK_EQ(rt_region_size(&older), rt_region_size(&defaults));
  rt_limiter *lim = t_new(&older);
  rt_stats s = t_stats(lim);
  CHECK_EQ(s.limits.window_ms, 1000);
  CHECK_EQ(s.limits.connections_per_window, 3);
  CHECK_EQ(s.limits.messages_per_window, 5);
  CHECK_EQ(s.limits.bytes_per_window, 0);
  CHECK_EQ(s.limits.max_message_size, 65536);
  CHECK_EQ(s.limits.max_clients, 65536);
  CHECK_EQ(s.limits.flags, 0);
  rt_limiter_free(lim);

  /* Too small to be any rt_limits. */
  rt_limits l = t_limits();
  for (uint32_t size = 0; size < 8; size++) {
    l.struct_size = size;
    CHECK_EQ(rt_limits_validate(&l), RT_STATUS_INVALID_ARGUMENT);
    rt_limiter *out = NULL;
    CHECK_EQ(rt_limiter_new(&l, &out), RT_STATUS_INVALID_ARGUMENT);
    CHECK(out == NULL);
    CHECK_EQ(rt_region_size(&l), 0);
  }
  char msg[200];
  rt_limits_error(&l, msg, sizeof msg);
  CHECK(strstr(msg, "struct_size") != NULL);

  /* A newer header: a larger struct. Zero tail: fine. Non-zero: refused. */
  struct {
    rt_limits l;
    uint64_t future[4];
  } newer;
  memset(&newer, 0, sizeof newer);
  newer.l = t_limits();
  newer.l.struct_size = sizeof newer;
  CHECK_EQ(rt_limits_validate(&newer.l), RT_STATUS_OK);
  lim = t_new(&newer.l);
  CHECK(lim != NULL);
  rt_limiter_free(lim);
  newer.future[3] = 1;
  CHECK_EQ(rt_limits_validate(&newer.l), RT_STATUS_INVALID_ARGUMENT);
  rt_limiter *out = NULL;
  CHECK_EQ(rt_limiter_new(&newer.l, &out), RT_STATUS_INVALID_ARGUMENT);
  CHECK(out == NULL);
  rt_limits_error(&newer.l, msg, sizeof msg);
  CHECK(strstr(msg, "newer header") != NULL);

  /* Output structs: the caller's struct_size bounds what is written. */
  l = t_limits();
  lim = t_new(&l);
  rt_conn c = 0;
  CHECK(rt_connect_at(lim, ID("x"), 0, &c).allowed);

  rt_stats st;
  memset(&st, 0xEE, sizeof st);
  st.struct_size = 4;
  CHECK_EQ(rt_limiter_stats(lim, &st), RT_STATUS_INVALID_ARGUMENT);
  CHECK_EQ(st.struct_size, 4);
  CHECK_EQ(st.active_connections, 0xEEEEEEEEEEEEEEEEull);
  /* An older rt_stats that ends after messages_allowed. */
  st.struct_size = (uint32_t)offsetof(rt_stats, denied);
  CHECK_EQ(rt_limiter_stats(lim, &st), RT_STATUS_OK);
  CHECK_EQ(st.struct_size, offsetof(rt_stats, denied));
  CHECK_EQ(st.active_connections, 1);
  CHECK_EQ(st.connections_allowed, 1);
  CHECK_EQ(st.denied[0], 0xEEEEEEEEEEEEEEEEull);
  CHECK_EQ(st.untracked_allowed, 0xEEEEEEEEEEEEEEEEull);
  /* A newer, larger one: our part is written, its tail left alone. */
  struct {
    rt_stats s;
    uint64_t future[2];
  } big;
  memset(&big, 0xEE, sizeof big);
  big.s.struct_size = sizeof big;
  CHECK_EQ(rt_limiter_stats(lim, &big.s), RT_STATUS_OK);
  CHECK_EQ(big.s.struct_size, sizeof(rt_stats));
  CHECK_EQ(big.s.untracked_allowed, 0);
  CHECK_EQ(big.future[0], 0xEEEEEEEEEEEEEEEEull);
  CHECK_EQ(big.future[1], 0xEEEEEEEEEEEEEEEEull);

  rt_connection_info info;
  memset(&info, 0xEE, sizeof info);
  info.struct_size = 7;
  CHECK_EQ(rt_limiter_connection_info(lim, c, &info), RT_STATUS_INVALID_ARGUMENT);
  info.struct_size = (uint32_t)offsetof(rt_connection_info, connected_at_ms);
  CHECK_EQ(rt_limiter_connection_info(lim, c, &info), RT_STATUS_OK);
  CHECK_EQ(info.client_id_len, 1);
  CHECK(info.client_id[0] == 'x');
  CHECK_EQ(info.connected_at_ms, 0xEEEEEEEEEEEEEEEEull);
  rt_limiter_free(lim);
}

static void cb_count(const rt_violation *v, void *user_data) {
  (void)v;
  (*(int *)user_data)++;
}

/* NULL for every pointer argument of every function. */
static void nulls(void) {
  rt_limits l = t_limits();
  rt_limiter *lim = t_new(&l);
  rt_limiter *out = NULL;
  rt_conn c = 77;
  rt_stats st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  rt_connection_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  rt_violation v[4];
  char buf[64];
  int calls = 0;

  rt_limits_default(NULL);
  CHECK_EQ(rt_limits_validate(NULL), RT_STATUS_NULL_ARGUMENT);
  CHECK(rt_limits_error(NULL, NULL, 0) > 0);
  CHECK_EQ(rt_region_size(NULL), 0);
  CHECK_EQ(rt_limiter_new(NULL, &out), RT_STATUS_NULL_ARGUMENT);
  CHECK_EQ(rt_limiter_new(&l, NULL), RT_STATUS_NULL_ARGUMENT);
  CHECK(out == NULL);
  rt_limiter_free(NULL);

  void *mem = aligned_alloc(64, 64 * 1024);
  CHECK_EQ(rt_limiter_init_in(NULL, 4096, &l, &out), RT_STATUS_NULL_ARGUMENT);
  CHECK_EQ(rt_limiter_init_in(mem, 64 * 1024, NULL, &out), RT_STATUS_NULL_ARGUMENT);
  CHECK_EQ(rt_limiter_init_in(mem, 64 * 1024, &l, NULL), RT_STATUS_NULL_ARGUMENT);
  CHECK_EQ(rt_limiter_attach(NULL, 4096, &out), RT_STATUS_NULL_ARGUMENT);
  CHECK_EQ(rt_limiter_attach(mem, 64 * 1024, NULL), RT_STATUS_NULL_ARGUMENT);
  CHECK(out == NULL);
  free(mem);

  CHECK_EQ(rt_limiter_update_limits(NULL, &l), RT_STATUS_NULL_ARGUMENT);
  CHECK_EQ(rt_limiter_update_limits(lim, NULL), RT_STATUS_NULL_ARGUMENT);
  CHECK_EQ(rt_reap_dead(NULL), 0);

  CHECK_DECISION(rt_connect(NULL, ID("a"), &c), false, RT_INVALID_ARGUMENT, 0);
  CHECK_EQ(c, 0);
  c = 77;
  CHECK_DECISION(rt_connect_at(NULL, ID("a"), 0, &c), false, RT_INVALID_ARGUMENT, 0);
  CHECK_EQ(c, 0);
  CHECK_DECISION(rt_connect(lim, ID("a"), NULL), false, RT_INVALID_ARGUMENT, 0);
  CHECK_DECISION(rt_connect_at(lim, ID("a"), 0, NULL), false, RT_INVALID_ARGUMENT, 0);
  CHECK_EQ(rt_client_connections(lim, ID("a")), 0); /* nothing connected */
  rt_disconnect(NULL, 1);
  CHECK_DECISION(rt_check_connection(NULL, ID("a")), false, RT_INVALID_ARGUMENT, 0);
  c = 77;
  CHECK_EQ(rt_register_connection(NULL, ID("a"), &c), RT_STATUS_NULL_ARGUMENT);
  CHECK_EQ(rt_register_connection(lim, ID("a"), NULL), RT_STATUS_NULL_ARGUMENT);
  CHECK_EQ(c, 77);
  CHECK_EQ(rt_client_connections(NULL, ID("a")), 0);

  CHECK_DECISION(rt_check_message(NULL, 1, 1), false, RT_INVALID_ARGUMENT, 0);
  CHECK_DECISION(rt_check_message_at(NULL, 1, 1, 0), false, RT_INVALID_ARGUMENT, 0);
  CHECK_DECISION(rt_check_key(NULL, ID("k"), 1), false, RT_INVALID_ARGUMENT, 0);
  CHECK_DECISION(rt_check_key_at(NULL, ID("k"), 1, 0), false, RT_INVALID_ARGUMENT, 0);

  CHECK_EQ(rt_limiter_stats(NULL, &st), RT_STATUS_NULL_ARGUMENT);
  CHECK_EQ(rt_limiter_stats(lim, NULL), RT_STATUS_NULL_ARGUMENT);
  CHECK_EQ(rt_limiter_connection_info(NULL, 1, &info), RT_STATUS_NULL_ARGUMENT);
  CHECK_EQ(rt_limiter_connection_info(lim, 1, NULL), RT_STATUS_NULL_ARGUMENT);
  memset(buf, 'x', sizeof buf);
  CHECK_EQ(rt_stats_prometheus(NULL, buf, sizeof buf), 0);
  CHECK(buf[0] == 'x');
  CHECK(rt_stats_prometheus(lim, NULL, 0) > 0);
  CHECK(rt_stats_prometheus(lim, NULL, 100) > 0); /* NULL buf: size query */

  rt_set_violation_callback(NULL, cb_count, &calls);
  rt_set_violation_callback(lim, NULL, NULL);
  CHECK_EQ(rt_drain_violations(NULL, v, 4), 0);
  CHECK_EQ(rt_drain_violations(lim, NULL, 4), 0);
  CHECK_EQ(rt_drain_violations(lim, v, 0), 0);
  CHECK_EQ(calls, 0);

  rt_limiter_free(lim);
}

/* A pointer that is not a limiter: refused by the magic check. */
static void foreign_pointer(void) {
  uint64_t *junk = calloc(1024, sizeof(uint64_t));
  rt_limiter *fake = (rt_limiter *)(void *)junk;
  rt_conn c = 5;
  rt_limits l = t_limits();
  rt_stats st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CHECK_DECISION(rt_connect(fake, ID("a"), &c), false, RT_INVALID_ARGUMENT, 0);
  CHECK_EQ(c, 0);
  CHECK_DECISION(rt_check_message(fake, 1, 1), false, RT_INVALID_ARGUMENT, 0);
  CHECK_EQ(rt_limiter_stats(fake, &st), RT_STATUS_INVALID_ARGUMENT);
  CHECK_EQ(rt_limiter_update_limits(fake, &l), RT_STATUS_INVALID_ARGUMENT);
  CHECK_EQ(rt_register_connection(fake, ID("a"), &c), RT_STATUS_INVALID_ARGUMENT);
  CHECK_EQ(rt_reap_dead(fake), 0);
  rt_limiter_free(fake); /* not a limiter: nothing happens */
  int untouched = 1;
  for (int i = 0; i < 1024; i++) untouched &= junk[i] == 0;
  CHECK(untouched);
  free(junk);
}

/* Ids: (NULL, 0), (NULL, n), 10000 bytes, embedded NUL, 0xFF bytes. */
static void ids(void) {
  rt_limits l = t_limits();
  l.max_concurrent_connections = 0;
  rt_limiter *lim = t_new(&l);
  rt_conn c1 = 0, c2 = 0, c3 = 0;

  /* (NULL, 0) and (ptr, 0) are the same, valid, empty id. */
  CHECK_DECISION(rt_connect_at(lim, NULL, 0, 0, &c1), true, RT_OK, 0);
  CHECK(c1 != 0);
  CHECK_DECISION(rt_connect_at(lim, (const uint8_t *)"zzz", 0, 0, &c2), true, RT_OK, 0);
  CHECK_EQ(rt_client_connections(lim, NULL, 0), 2);
  CHECK_DECISION(rt_check_connection(lim, NULL, 0), true, RT_OK, 0);
  CHECK_EQ(rt_register_connection(lim, NULL, 0, &c3), RT_STATUS_OK);
  CHECK_EQ(rt_client_connections(lim, (const uint8_t *)"", 0), 3);
  CHECK_DECISION(rt_check_key_at(lim, NULL, 0, 5, 0), true, RT_OK, 0);

  /* (NULL, 5): refused before any byte is read. */
  rt_conn c = 9;
  CHECK_DECISION(rt_connect_at(lim, NULL, 5, 0, &c), false, RT_INVALID_ARGUMENT, 0);
  CHECK_EQ(c, 0);
  CHECK_DECISION(rt_connect(lim, NULL, 5, &c), false, RT_INVALID_ARGUMENT, 0);
  CHECK_DECISION(rt_check_connection(lim, NULL, 5), false, RT_INVALID_ARGUMENT, 0);
  CHECK_DECISION(rt_check_key(lim, NULL, 5, 1), false, RT_INVALID_ARGUMENT, 0);
  CHECK_DECISION(rt_check_key_at(lim, NULL, 5, 1, 0), false, RT_INVALID_ARGUMENT, 0);
  CHECK_EQ(rt_client_connections(lim, NULL, 5), 0);
  c = 9;
  CHECK_EQ(rt_register_connection(lim, NULL, 5, &c), RT_STATUS_NULL_ARGUMENT);
  CHECK_EQ(c, 9);
  /* A length no object can have (> PTRDIFF_MAX). */
  CHECK_DECISION(rt_connect(lim, (const uint8_t *)"a", SIZE_MAX, &c), false, RT_INVALID_ARGUMENT, 0);
  CHECK_DECISION(rt_check_key(lim, (const uint8_t *)"a", (size_t)PTRDIFF_MAX + 1, 1), false,
                 RT_INVALID_ARGUMENT, 0);
  CHECK_EQ(rt_register_connection(lim, (const uint8_t *)"a", SIZE_MAX, &c), RT_STATUS_INVALID_ARGUMENT);
  CHECK_EQ(rt_client_connections(lim, (const uint8_t *)"a", SIZE_MAX), 0);

  /* Embedded NUL: "a\0b" and "a" are distinct clients. */
  rt_conn ca = 0, cab = 0;
  CHECK(rt_connect_at(lim, ID("a\0b"), 0, &cab).allowed);
  CHECK_EQ(rt_client_connections(lim, ID("a\0b")), 1);
  CHECK_EQ(rt_client_connections(lim, ID("a")), 0);
  CHECK(rt_connect_at(lim, ID("a"), 0, &ca).allowed);
  CHECK_EQ(rt_client_connections(lim, ID("a")), 1);
  CHECK_EQ(rt_client_connections(lim, ID("a\0b")), 1);
  CHECK_EQ(rt_client_connections(lim, ID("a\0c")), 0);
  /* Not UTF-8: any bytes. */
  static const uint8_t ff[] = {0xFF, 0xFE, 0x00, 0xC0};
  rt_conn cff = 0;
  CHECK(rt_connect_at(lim, ff, sizeof ff, 0, &cff).allowed);
  CHECK_EQ(rt_client_connections(lim, ff, sizeof ff), 1);

  /* 10000-byte ids: full-length compare, first 40 bytes reported. */
  uint8_t *big = malloc(10000);
  memset(big, 'q', 10000);
  rt_conn cbig = 0;
  CHECK(rt_connect_at(lim, big, 10000, 0, &cbig).allowed);
  big[9999] = 'r'; /* differs only in the last byte */
  CHECK_EQ(rt_client_connections(lim, big, 10000), 0);
  big[9999] = 'q';
  CHECK_EQ(rt_client_connections(lim, big, 10000), 1);
  CHECK_EQ(rt_client_connections(lim, big, 9999), 0);
  rt_connection_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_EQ(rt_limiter_connection_info(lim, cbig, &info), RT_STATUS_OK);
  CHECK_EQ(info.client_id_len, 10000);
  CHECK(memcmp(info.client_id, big, 40) == 0);
  free(big);

  rt_disconnect(lim, c1);
  rt_disconnect(lim, c2);
  rt_disconnect(lim, c3);
  CHECK_EQ(rt_client_connections(lim, NULL, 0), 0);
  rt_limiter_free(lim);
}

/* Stale and forged handles: 0, random, index out of range, wrong
 * generation, after disconnect, after the slot is reused. */
static void handles(void) {
  rt_limits l = t_limits();
  rt_limiter *lim = t_new(&l);
  rt_conn c = 0;
  CHECK(rt_connect_at(lim, ID("h"), 0, &c).allowed);
  CHECK(c != 0);
  rt_connection_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;

  const rt_conn forged[] = {
      0,
      0x9E3779B97F4A7C15ull,            /* random 64 bits */
      UINT64_MAX,
      (1ull << 32) | 0xFFFFFFFFull,     /* index far out of range */
      (c & 0xFFFFFFFF00000000ull) | 257, /* index just past max_connections */
      c ^ (1ull << 32),                 /* wrong generation */
      c ^ (1ull << 54),                 /* wrong generation, high bit */
      c + (5ull << 32),                 /* a later generation */
  };
  for (size_t i = 0; i < sizeof forged / sizeof forged[0]; i++) {
    CHECK_DECISION(rt_check_message_at(lim, forged[i], 1, 0), false, RT_UNKNOWN_CONNECTION, 0);
    CHECK_DECISION(rt_check_message(lim, forged[i], 1), false, RT_UNKNOWN_CONNECTION, 0);
    CHECK_EQ(rt_limiter_connection_info(lim, forged[i], &info), RT_STATUS_UNKNOWN_CONNECTION);
    rt_disconnect(lim, forged[i]); /* ignored */
    CHECK_EQ(rt_client_connections(lim, ID("h")), 1);
  }
  CHECK(rt_check_message_at(lim, c, 1, 0).allowed);

  rt_disconnect(lim, c);
  rt_disconnect(lim, c); /* idempotent */
  CHECK_EQ(rt_client_connections(lim, ID("h")), 0);
  CHECK_DECISION(rt_check_message_at(lim, c, 1, 0), false, RT_UNKNOWN_CONNECTION, 0);
  CHECK_EQ(rt_limiter_connection_info(lim, c, &info), RT_STATUS_UNKNOWN_CONNECTION);

  /* Reuse: a new connection may take the same slot, never the same handle. */
  rt_conn again[8];
  for (int i = 0; i < 8; i++) {
    CHECK(rt_connect_at(lim, ID("h2"), 0, &again[i]).allowed);
    CHECK(again[i] != c);
  }
  CHECK_DECISION(rt_check_message_at(lim, c, 1, 0), false, RT_UNKNOWN_CONNECTION, 0);
  rt_disconnect(lim, c);
  CHECK_EQ(rt_client_connections(lim, ID("h2")), 8);
  for (int i = 0; i < 8; i++) rt_disconnect(lim, again[i]);

  rt_stats s = t_stats(lim);
  CHECK(s.denied[RT_UNKNOWN_CONNECTION] >= 2 * (sizeof forged / sizeof forged[0] - 1));
  CHECK_EQ(s.active_connections, 0);
  rt_limiter_free(lim);
}

/* Huge sizes and times never crash and decide as documented. */
static void huge(void) {
  rt_limits l = t_limits();
  rt_limiter *lim = t_new(&l);
  rt_conn c = 0;
  CHECK(rt_connect_at(lim, ID("big"), UINT64_MAX, &c).allowed);
  rt_decision d = rt_check_message_at(lim, c, UINT64_MAX, UINT64_MAX);
  CHECK_DECISION(d, false, RT_MESSAGE_TOO_LARGE, RT_RETRY_NEVER);
  CHECK_EQ(d.limit, 65536);
  CHECK_EQ(d.current, UINT64_MAX);
  CHECK_DECISION(rt_check_message(lim, c, UINT64_MAX), false, RT_MESSAGE_TOO_LARGE, RT_RETRY_NEVER);
  CHECK_DECISION(rt_check_message_at(lim, c, 0, UINT64_MAX), true, RT_OK, 0);
  /* Time going backwards from the end of time: no time passed. */
  CHECK_DECISION(rt_check_message_at(lim, c, 1, 0), true, RT_OK, 0);
  rt_limiter_free(lim);

  /* Bandwidth and client bandwidth: a size above the limit never passes. */
  l = t_limits();
  l.max_message_size = 0;
  l.bytes_per_window = 1000;
  lim = t_new(&l);
  CHECK(rt_connect_at(lim, ID("big"), 0, &c).allowed);
  CHECK_DECISION(rt_check_message_at(lim, c, UINT64_MAX, 0), false, RT_BANDWIDTH, RT_RETRY_NEVER);
  CHECK_DECISION(rt_check_message_at(lim, c, 1001, 0), false, RT_BANDWIDTH, RT_RETRY_NEVER);
  CHECK_DECISION(rt_check_message_at(lim, c, 1000, 0), true, RT_OK, 0);
  rt_limiter_free(lim);

  l = t_limits();
  l.client_bytes_per_window = 500;
  lim = t_new(&l);
  CHECK_DECISION(rt_check_key_at(lim, ID("room:1"), UINT64_MAX, 0), false, RT_CLIENT_BANDWIDTH,
                 RT_RETRY_NEVER);
  CHECK_DECISION(rt_check_key_at(lim, ID("room:1"), 500, UINT64_MAX), true, RT_OK, 0);
  rt_limiter_free(lim);

  /* Every limit off: a UINT64_MAX-byte message is allowed and counted. */
  l = t_limits();
  l.max_message_size = 0;
  l.messages_per_window = 0;
  lim = t_new(&l);
  CHECK(rt_connect_at(lim, ID("big"), 0, &c).allowed);
  CHECK_DECISION(rt_check_message_at(lim, c, UINT64_MAX, 0), true, RT_OK, 0);
  CHECK_DECISION(rt_check_message_at(lim, c, UINT64_MAX, 0), true, RT_OK, 0);
  CHECK_DECISION(rt_check_message_at(lim, c, UINT64_MAX, 120000), true, RT_OK, 0);
  rt_stats s = t_stats(lim);
  CHECK_EQ(s.total_messages, 3);
  rt_limiter_free(lim);
}

int main(void) {
  strings();
  limits();
  struct_sizes();
  nulls();
  foreign_pointer();
  ids();
  handles();
  huge();
  return t_done("test_basics");
}
