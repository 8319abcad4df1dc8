/*
 * Limiters in caller memory: rt_limiter_init_in in aligned_alloc(64) memory,
 * a second handle through rt_limiter_attach (they share limits, counters
 * and the violation ring), attach on garbage and on zeroed memory, misaligned
 * and too-small memory, freeing handles without freeing the memory, a
 * MAP_SHARED region whose connections a dead process leaves to rt_reap_dead,
 * and rt_limiter_open_file: create, attach from another process, errors.
 */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* aligned_alloc needs a size that is a multiple of the alignment. */
static void *alloc64(size_t len) {
  size_t rounded = (len + 63) / 64 * 64;
  return aligned_alloc(64, rounded);
}

static void init_and_attach(void) {
  rt_limits l = t_limits();
  l.window_ms = 1000;
  l.messages_per_window = 3;
  size_t size = rt_region_size(&l);
  CHECK(size > 0);
  unsigned char *mem = alloc64(size + 64);
  memset(mem, 0x5A, size + 64); /* init_in must not need zeroed memory */

  rt_limiter *a = NULL, *b = NULL;
  CHECK_EQ(rt_limiter_init_in(mem, size, &l, &a), RT_STATUS_OK);
  CHECK(a != NULL);
  CHECK_EQ(rt_limiter_attach(mem, size, &b), RT_STATUS_OK);
  CHECK(b != NULL && b != a);
  /* A longer length is fine too. */
  rt_limiter *b2 = NULL;
  CHECK_EQ(rt_limiter_attach(mem, size + 64, &b2), RT_STATUS_OK);
  rt_limiter_free(b2);

  /* Both handles see the same clients, connections and counters. */
  rt_conn c = 0;
  CHECK(rt_connect_at(a, ID("shared"), 0, &c).allowed);
  CHECK_EQ(rt_client_connections(b, ID("shared")), 1);
  CHECK(rt_check_message_at(a, c, 1, 0).allowed);
  CHECK(rt_check_message_at(b, c, 1, 0).allowed);
  CHECK(rt_check_message_at(a, c, 1, 0).allowed);
  CHECK_DECISION(rt_check_message_at(b, c, 1, 0), false, RT_MESSAGE_RATE, 1334);
  rt_stats sa = t_stats(a), sb = t_stats(b);
  CHECK_EQ(sa.total_messages, 3);
  CHECK_EQ(sb.total_messages, 3);
  CHECK_EQ(sb.denied[RT_MESSAGE_RATE], 1);

  /* Limits are shared: an update through one is seen by the other. */
  rt_limits more = l;
  more.messages_per_window = 10;
  more.max_message_size = 50;
  CHECK_EQ(rt_limiter_update_limits(b, &more), RT_STATUS_OK);
  CHECK_DECISION(rt_check_message_at(a, c, 1, 0), true, RT_OK, 0);
  CHECK_DECISION(rt_check_message_at(a, c, 51, 0), false, RT_MESSAGE_TOO_LARGE, RT_RETRY_NEVER);
  sa = t_stats(a);
  CHECK_EQ(sa.limits.messages_per_window, 10);
  CHECK_EQ(sa.limits.max_message_size, 50);

  /* The ring is shared; drained once, by either handle. */
  rt_violation v[4];
  CHECK_EQ(rt_drain_violations(a, v, 1), 1);
  CHECK_EQ(v[0].reason, RT_MESSAGE_RATE);
  CHECK_EQ(rt_drain_violations(b, v, 4), 1);
  CHECK_EQ(v[0].reason, RT_MESSAGE_TOO_LARGE);
  CHECK_EQ(rt_drain_violations(a, v, 4), 0);

  /* Freeing a handle leaves the memory and the other handles alone. */
  rt_limiter_free(a);
  CHECK(rt_check_message_at(b, c, 1, 0).allowed);
  rt_disconnect(b, c);
  CHECK_EQ(rt_client_connections(b, ID("shared")), 0);
  rt_limiter *again = NULL;
  CHECK_EQ(rt_limiter_attach(mem, size, &again), RT_STATUS_OK);
  CHECK_EQ(t_stats(again).total_messages, 5);
  rt_limiter_free(again);
  rt_limiter_free(b);

  /* Re-initialising formats a fresh region. */
  CHECK_EQ(rt_limiter_init_in(mem, size, &l, &a), RT_STATUS_OK);
  CHECK_EQ(t_stats(a).total_messages, 0);
  rt_limiter_free(a);
  free(mem);
}

static void bad_memory(void) {
  rt_limits l = t_limits();
  size_t size = rt_region_size(&l);
  unsigned char *mem = alloc64(size + 64);
  memset(mem, 0, size + 64);
  rt_limiter *lim = NULL;

  /* Zeroed memory is not a region. */
  CHECK_EQ(rt_limiter_attach(mem, size, &lim), RT_STATUS_INCOMPATIBLE_REGION);
  CHECK(lim == NULL);

  /* Garbage is not a region either (a fixed xorshift sequence). */
  uint64_t x = 0x243F6A8885A308D3ull;
  for (size_t i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    mem[i] = (unsigned char)x;
  }
  CHECK_EQ(rt_limiter_attach(mem, size, &lim), RT_STATUS_INCOMPATIBLE_REGION);
  CHECK(lim == NULL);

  /* Misaligned memory, for init and attach. */
  CHECK_EQ(rt_limiter_init_in(mem + 8, size, &l, &lim), RT_STATUS_INVALID_ARGUMENT);
  CHECK_EQ(rt_limiter_init_in(mem + 1, size, &l, &lim), RT_STATUS_INVALID_ARGUMENT);
  CHECK_EQ(rt_limiter_attach(mem + 32, size, &lim), RT_STATUS_INVALID_ARGUMENT);
  CHECK(lim == NULL);

  /* Too small. */
  CHECK_EQ(rt_limiter_init_in(mem, size - 1, &l, &lim), RT_STATUS_REGION_TOO_SMALL);
  CHECK_EQ(rt_limiter_init_in(mem, 0, &l, &lim), RT_STATUS_REGION_TOO_SMALL);
  CHECK_EQ(rt_limiter_init_in(mem, 64, &l, &lim), RT_STATUS_REGION_TOO_SMALL);
  CHECK(lim == NULL);
  CHECK_EQ(rt_limiter_init_in(mem, size, &l, &lim), RT_STATUS_OK);
  rt_limiter *b = NULL;
  CHECK_EQ(rt_limiter_attach(mem, size - 1, &b), RT_STATUS_REGION_TOO_SMALL);
  CHECK_EQ(rt_limiter_attach(mem, 64, &b), RT_STATUS_REGION_TOO_SMALL);
  CHECK_EQ(rt_limiter_attach(mem, 0, &b), RT_STATUS_REGION_TOO_SMALL);
  CHECK(b == NULL);

  /* Invalid limits and struct_size. */
  rt_limiter *c = NULL;
  rt_limits bad = l;
  bad.window_ms = 0;
  CHECK_EQ(rt_limiter_init_in(mem, size, &bad, &c), RT_STATUS_INVALID_LIMITS);
  bad = l;
  bad.struct_size = 2;
  CHECK_EQ(rt_limiter_init_in(mem, size, &bad, &c), RT_STATUS_INVALID_ARGUMENT);
  CHECK(c == NULL);
  /* ... which left the region in place: the first handle still works. */
  rt_conn conn = 0;
  CHECK(rt_connect_at(lim, ID("still"), 0, &conn).allowed);

  /* A corrupted header (the magic) is refused by attach. */
  mem[0] ^= 0xFF;
  CHECK_EQ(rt_limiter_attach(mem, size, &b), RT_STATUS_INCOMPATIBLE_REGION);
  mem[0] ^= 0xFF;
  CHECK_EQ(rt_limiter_attach(mem, size, &b), RT_STATUS_OK);
  rt_limiter_free(b);
  rt_limiter_free(lim);
  free(mem);

  /* A region bigger than the capacities need works the same. */
  l.max_clients = 1;
  l.max_connections = 1;
  size_t tiny = rt_region_size(&l);
  CHECK(tiny > 0 && tiny < size);
  mem = alloc64(size);
  CHECK_EQ(rt_limiter_init_in(mem, size, &l, &lim), RT_STATUS_OK);
  CHECK_EQ(t_stats(lim).max_connections, 1);
  rt_limiter_free(lim);
  free(mem);
}

/* A worker process connects through shared memory and dies without
 * disconnecting: its connections stay until rt_reap_dead frees them. */
static void reap_dead_process(void) {
  rt_limits l = t_limits();
  l.max_concurrent_connections = 2;
  size_t size = rt_region_size(&l);
  void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  CHECK(mem != MAP_FAILED);
  if (mem == MAP_FAILED) return;
  rt_limiter *lim = NULL;
  CHECK_EQ(rt_limiter_init_in(mem, size, &l, &lim), RT_STATUS_OK);
  rt_conn mine = 0;
  CHECK(rt_connect(lim, ID("parent"), &mine).allowed);

  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    rt_limiter *w = NULL;
    int ok = rt_limiter_attach(mem, size, &w) == RT_STATUS_OK;
    rt_conn a = 0, b = 0;
    ok = ok && rt_connect(w, ID("worker"), &a).allowed && rt_connect(w, ID("worker"), &b).allowed;
    rt_limiter_free(w); /* frees the handle only: the connections stay */
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

  CHECK_EQ(rt_client_connections(lim, ID("worker")), 2);
  rt_conn c = 0;
  CHECK_DECISION(rt_connect(lim, ID("worker"), &c), false, RT_CONCURRENT_CONNECTIONS, 0);
  CHECK_EQ(rt_reap_dead(lim), 2);
  CHECK_EQ(rt_client_connections(lim, ID("worker")), 0);
  CHECK_EQ(rt_client_connections(lim, ID("parent")), 1); /* a live process keeps its own */
  CHECK_EQ(rt_reap_dead(lim), 0);
  CHECK(rt_connect(lim, ID("worker"), &c).allowed);
  rt_stats s = t_stats(lim);
  CHECK_EQ(s.active_connections, 2);
  rt_disconnect(lim, c);
  rt_disconnect(lim, mine);
  rt_limiter_free(lim);
  munmap(mem, size);
}

/* rt_limiter_open_file: a file under /dev/shm created by one handle and
 * attached by a child process and a second handle; the errors. */
static void open_file(void) {
  char path[96];
  snprintf(path, sizeof path, "/dev/shm/ratethrottle-c-test-%d", (int)getpid());
  unlink(path);
  rt_limits l = t_limits();
  l.max_concurrent_connections = 2;
  rt_limiter *lim = NULL, *other = NULL;
  bool attached = true;

  CHECK_EQ(rt_limiter_open_file(NULL, &l, &lim, NULL), RT_STATUS_NULL_ARGUMENT);
  CHECK_EQ(rt_limiter_open_file(path, &l, NULL, NULL), RT_STATUS_NULL_ARGUMENT);
  /* Attach only, no file: errno says why; nothing is created. */
  errno = 0;
  CHECK_EQ(rt_limiter_open_file(path, NULL, &lim, &attached), RT_STATUS_IO_ERROR);
  CHECK_EQ(errno, ENOENT);
  CHECK(lim == NULL && access(path, F_OK) != 0);
  rt_limits bad = l;
  bad.window_ms = 0;
  CHECK_EQ(rt_limiter_open_file(path, &bad, &lim, NULL), RT_STATUS_INVALID_LIMITS);
  CHECK(access(path, F_OK) != 0);

  CHECK_EQ(rt_limiter_open_file(path, &l, &lim, &attached), RT_STATUS_OK);
  CHECK(lim != NULL && !attached);
  rt_conn mine = 0;
  CHECK(rt_connect(lim, ID("client"), &mine).allowed);

  /* Another process attaches (no limits needed) and takes the last slot. */
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    rt_limiter *w = NULL;
    bool att = false;
    rt_conn c = 0;
    int ok = rt_limiter_open_file(path, NULL, &w, &att) == RT_STATUS_OK && att;
    ok = ok && rt_client_connections(w, ID("client")) == 1 && rt_connect(w, ID("client"), &c).allowed;
    ok = ok && !rt_connect(w, ID("client"), &c).allowed;
    rt_disconnect(w, c);
    rt_limiter_free(w);
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

  /* A second handle with (different) limits attaches: the region's apply. */
  rt_limits more = l;
  more.max_concurrent_connections = 9;
  CHECK_EQ(rt_limiter_open_file(path, &more, &other, &attached), RT_STATUS_OK);
  CHECK(attached);
  rt_conn c2 = 0, c3 = 0;
  CHECK(rt_connect(other, ID("client"), &c2).allowed);
  CHECK_DECISION(rt_connect(lim, ID("client"), &c3), false, RT_CONCURRENT_CONNECTIONS, 0);
  rt_disconnect(other, c2);
  rt_disconnect(lim, mine);
  rt_limiter_free(other);
  rt_limiter_free(lim);

  /* The state stays in the file; a file that is not a region is refused. */
  CHECK_EQ(rt_limiter_open_file(path, NULL, &lim, NULL), RT_STATUS_OK);
  CHECK_EQ(t_stats(lim).connections_allowed, 3);
  rt_limiter_free(lim);
  lim = NULL;
  FILE *f = fopen(path, "w");
  CHECK(f != NULL);
  if (f) {
    fputs("not a region", f);
    fclose(f);
  }
  CHECK_EQ(rt_limiter_open_file(path, &l, &lim, NULL), RT_STATUS_REGION_TOO_SMALL);
  f = fopen(path, "w");
  CHECK(f != NULL);
  if (f) {
    for (int i = 0; i < 100000; i++) fputc(i * 7, f);
    fclose(f);
  }
  CHECK_EQ(rt_limiter_open_file(path, &l, &lim, NULL), RT_STATUS_INCOMPATIBLE_REGION);
  CHECK(lim == NULL);
  CHECK_EQ(rt_limiter_open_file("/dev/shm", &l, &lim, NULL), RT_STATUS_IO_ERROR);
  CHECK_STR(rt_status_str(RT_STATUS_IO_ERROR), "i/o error");
  unlink(path);
}

int main(void) {
  init_and_attach();
  bad_memory();
  reap_dead_process();
  open_file();
  return t_done("test_memory");
}
