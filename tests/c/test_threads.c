/*
 * One limiter shared by several threads with no external lock: concurrency
 * never exceeds its limit, nothing is lost (allowed counts add up), and the
 * callback runs on the deciding threads.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "harness.h"

enum { THREADS = 4, ROUNDS = 2000, MAX_LIVE = 3 };

static rt_limiter *lim;
static atomic_int live_hot;
static atomic_int max_seen;
static atomic_long allowed_connects;
static atomic_long allowed_messages;
static atomic_long callbacks;
static atomic_int errors;

static void on_violation(const rt_violation *v, void *user_data) {
  (void)v;
  atomic_fetch_add((atomic_long *)user_data, 1);
}

static void *worker(void *arg) {
  int id = (int)(intptr_t)arg;
  char mine[16];
  int n = snprintf(mine, sizeof mine, "own-%d", id);
  for (int i = 0; i < ROUNDS; i++) {
    rt_conn c = 0;
    rt_decision d = rt_connect(lim, ID("hot"), &c);
    if (d.allowed) {
      atomic_fetch_add(&allowed_connects, 1);
      int now = atomic_fetch_add(&live_hot, 1) + 1;
      int prev = atomic_load(&max_seen);
      while (now > prev && !atomic_compare_exchange_weak(&max_seen, &prev, now)) {
      }
      if (rt_check_message(lim, c, 10).allowed) atomic_fetch_add(&allowed_messages, 1);
      atomic_fetch_sub(&live_hot, 1);
      rt_disconnect(lim, c);
    } else if (d.reason != RT_CONCURRENT_CONNECTIONS || c != 0) {
      atomic_fetch_add(&errors, 1);
    }
    rt_conn own = 0;
    if (rt_connect(lim, (const uint8_t *)mine, (size_t)n, &own).allowed) {
      atomic_fetch_add(&allowed_connects, 1);
      for (int k = 0; k < 3; k++)
        if (rt_check_message(lim, own, 1).allowed) atomic_fetch_add(&allowed_messages, 1);
      rt_disconnect(lim, own);
    } else {
      atomic_fetch_add(&errors, 1);
    }
  }
  return NULL;
}

int main(void) {
  rt_limits l = t_limits();
  l.max_concurrent_connections = MAX_LIVE;
  l.connections_per_window = 0;
  l.messages_per_window = 0;
  lim = t_new(&l);
  rt_set_violation_callback(lim, on_violation, &callbacks);

  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i);
  for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);

  rt_stats s = t_stats(lim);
  CHECK_EQ(atomic_load(&errors), 0);
  CHECK(atomic_load(&max_seen) <= MAX_LIVE);
  CHECK(atomic_load(&max_seen) >= 1);
  CHECK_EQ(s.active_connections, 0);
  CHECK_EQ(s.connections_allowed, (uint64_t)atomic_load(&allowed_connects));
  CHECK_EQ(s.total_messages, (uint64_t)atomic_load(&allowed_messages));
  CHECK_EQ(s.denied[RT_CONCURRENT_CONNECTIONS], (uint64_t)atomic_load(&callbacks));
  CHECK_EQ(s.connections_allowed + s.denied[RT_CONCURRENT_CONNECTIONS], 2 * THREADS * ROUNDS);
  CHECK_EQ(rt_client_connections(lim, ID("hot")), 0);
  rt_limiter_free(lim);
  return t_done("test_threads");
}
