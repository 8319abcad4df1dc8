/*
 * Every entry point survives a Rust panic (TEST-PLAN A8). Linked against a
 * library built with the test-only feature `panic_inject`: while
 * RT_PANIC_INJECT=1 is set, every call panics inside the boundary. Status
 * functions must return RT_STATUS_PANIC, decision functions a deny with
 * RT_INVALID_ARGUMENT, the others their neutral value; out-params are left
 * alone (except *out_conn, which is 0 on every denial); the process
 * survives and the limiter is still consistent afterwards.
 */
#define _POSIX_C_SOURCE 200112L
#include <stdlib.h>

#include "harness.h"

static void inject(int on) {
  if (on)
    setenv("RT_PANIC_INJECT", "1", 1);
  else
    unsetenv("RT_PANIC_INJECT");
}

static void on_violation(const rt_violation *v, void *user_data) {
  (void)v;
  (*(int *)user_data)++;
}

int main(void) {
  const char *env = getenv("RT_PANIC_INJECT");
  CHECK(env != NULL && strcmp(env, "1") == 0); /* run.sh sets it */
  fprintf(stderr, "test_panic: the injected-panic messages below are expected\n");

  inject(0);
  rt_limits l = t_limits();
  l.connections_per_window = 1;
  rt_limiter *sentinel = (rt_limiter *)(void *)&l;
  rt_limiter *out = sentinel;
  inject(1);
  CHECK_EQ(rt_limiter_new(&l, &out), RT_STATUS_PANIC); /* proves injection is on */
  CHECK(out == sentinel);

  /* A limiter with one live connection, made with injection off. */
  inject(0);
  rt_limiter *lim = t_new(&l);
  rt_conn c = 0;
  CHECK(rt_connect_at(lim, ID("victim"), 0, &c).allowed);
  size_t size = rt_region_size(&l);
  void *mem = aligned_alloc(64, (size + 63) / 64 * 64);
  int calls = 0;

  inject(1);
  CHECK_STR(rt_version(), "unknown");
  CHECK_STR(rt_status_str(RT_STATUS_OK), "unknown");
  CHECK_STR(rt_reason_str(RT_OK), "unknown");
  CHECK_STR(rt_violation_type_str(RT_OK), "unknown");

  rt_limits l2;
  memset(&l2, 0x11, sizeof l2);
  rt_limits_default(&l2);
  CHECK_EQ(l2.window_ms, 0x11111111u); /* not written */
  CHECK_EQ(rt_limits_validate(&l), RT_STATUS_PANIC);
  char buf[32];
  memset(buf, 'x', sizeof buf);
  CHECK_EQ(rt_limits_error(&l, buf, sizeof buf), 0);
  CHECK(buf[0] == 'x');
  CHECK_EQ(rt_region_size(&l), 0);

  out = sentinel;
  CHECK_EQ(rt_limiter_new(&l, &out), RT_STATUS_PANIC);
  CHECK_EQ(rt_limiter_init_in(mem, size, &l, &out), RT_STATUS_PANIC);
  CHECK_EQ(rt_limiter_attach(mem, size, &out), RT_STATUS_PANIC);
  CHECK(out == sentinel);
  CHECK_EQ(rt_limiter_update_limits(lim, &l), RT_STATUS_PANIC);
  CHECK_EQ(rt_reap_dead(lim), 0);
  rt_limiter_free(lim); /* a no-op under injection: lim stays usable */

  rt_conn c2 = 77;
  CHECK_DECISION(rt_connect(lim, ID("x"), &c2), false, RT_INVALID_ARGUMENT, 0);
  CHECK_EQ(c2, 0);
  c2 = 77;
  CHECK_DECISION(rt_connect_at(lim, ID("x"), 0, &c2), false, RT_INVALID_ARGUMENT, 0);
  CHECK_EQ(c2, 0);
  rt_disconnect(lim, c);
  CHECK_DECISION(rt_check_connection(lim, ID("x")), false, RT_INVALID_ARGUMENT, 0);
  c2 = 77;
  CHECK_EQ(rt_register_connection(lim, ID("x"), &c2), RT_STATUS_PANIC);
  CHECK_EQ(c2, 77);
  CHECK_EQ(rt_client_connections(lim, ID("victim")), 0);

  CHECK_DECISION(rt_check_message(lim, c, 1), false, RT_INVALID_ARGUMENT, 0);
  CHECK_DECISION(rt_check_message_at(lim, c, 1, 0), false, RT_INVALID_ARGUMENT, 0);
  CHECK_DECISION(rt_check_key(lim, ID("k"), 1), false, RT_INVALID_ARGUMENT, 0);
  CHECK_DECISION(rt_check_key_at(lim, ID("k"), 1, 0), false, RT_INVALID_ARGUMENT, 0);

  rt_stats s;
  memset(&s, 0x22, sizeof s);
  s.struct_size = sizeof s;
  CHECK_EQ(rt_limiter_stats(lim, &s), RT_STATUS_PANIC);
  CHECK_EQ(s.active_connections, 0x2222222222222222ull);
  rt_connection_info info;
  memset(&info, 0x22, sizeof info);
  info.struct_size = sizeof info;
  CHECK_EQ(rt_limiter_connection_info(lim, c, &info), RT_STATUS_PANIC);
  CHECK_EQ(info.message_count, 0x2222222222222222ull);
  memset(buf, 'x', sizeof buf);
  CHECK_EQ(rt_stats_prometheus(lim, buf, sizeof buf), 0);
  CHECK(buf[0] == 'x');
  rt_set_violation_callback(lim, on_violation, &calls);
  rt_violation v[2];
  CHECK_EQ(rt_drain_violations(lim, v, 2), 0);

  /* Injection off: the limiter is intact and consistent. */
  inject(0);
  CHECK_EQ(rt_client_connections(lim, ID("victim")), 1); /* disconnect did nothing */
  CHECK(rt_check_message_at(lim, c, 1, 0).allowed);
  CHECK_EQ(rt_connect_at(lim, ID("victim"), 0, &c2).reason, RT_CONNECTION_RATE);
  CHECK_EQ(calls, 0); /* set_violation_callback did nothing */
  s = t_stats(lim);
  CHECK_EQ(s.active_connections, 1);
  CHECK_EQ(s.connections_allowed, 1);
  CHECK_EQ(s.total_messages, 1);
  CHECK_EQ(s.denied[RT_CONNECTION_RATE], 1);
  CHECK_EQ(rt_drain_violations(lim, v, 2), 1);
  CHECK_STR(rt_version(), rt_version());
  CHECK(strcmp(rt_version(), "unknown") != 0);
  rt_disconnect(lim, c);
  rt_limiter_free(lim);
  free(mem);
  return t_done("test_panic");
}
