/*
 * ngx_http_ratethrottle_module: connection and WebSocket message limits
 * shared by every worker, decided by the ratethrottle engine.
 *
 * The engine's region lives in an nginx shared memory zone (allocated from
 * the zone's slab pool, formatted once by the master at zone init, attached
 * again when a reload keeps the zone). Every limiting decision comes from the
 * engine; this module only translates: it computes the key, frames the
 * WebSocket stream, and turns decisions into status codes and Close frames.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <ratethrottle.h>


#define NGX_HTTP_RATETHROTTLE_MAX_CAPACITY  8388608
#define NGX_HTTP_RATETHROTTLE_REAP_MS       10000

/* how long to wait for the client's Close after ours (RFC 6455 7.1.1) */
#define NGX_HTTP_RATETHROTTLE_CLOSE_WAIT_MS  5000

/* RFC 6455 close codes */
#define NGX_HTTP_RATETHROTTLE_WS_PROTOCOL_ERROR  1002
#define NGX_HTTP_RATETHROTTLE_WS_POLICY          1008
#define NGX_HTTP_RATETHROTTLE_WS_TOO_BIG         1009


typedef struct {
    ngx_http_complex_value_t     key;
    ngx_str_t                    name;
    rt_limits                    limits;
    ngx_uint_t                   explicit_capacity;

    /* this process's handle on the shared region (made at zone init in the
       master, inherited by the workers across fork) */
    rt_limiter                  *lim;
    void                        *region;
    size_t                       region_len;

    ngx_shm_zone_t              *shm_zone;
} ngx_http_ratethrottle_zone_t;


typedef struct {
    ngx_array_t                  zones;   /* ngx_http_ratethrottle_zone_t * */
} ngx_http_ratethrottle_main_conf_t;


typedef struct {
    ngx_shm_zone_t              *shm_zone;
    ngx_uint_t                   off;     /* unsigned off:1 */

    /* the status= and dry_run parameters of "ratethrottle zone=...": they
       belong to that directive and are inherited only with it */
    ngx_uint_t                   zone_status;     /* 0: not given */
    ngx_flag_t                   zone_dry_run;

    /* ratethrottle_status_code and ratethrottle_dry_run */
    ngx_uint_t                   status_code;
    ngx_flag_t                   dry_run;

    /* what applies (set at merge): the parameters, else the directives */
    ngx_uint_t                   deny_status;
    ngx_flag_t                   deny_dry_run;

    ngx_uint_t                   log_level;
    ngx_flag_t                   control_frames;
    ngx_shm_zone_t              *status_zone;
} ngx_http_ratethrottle_loc_conf_t;


/* incremental frame parser state, one per direction */
typedef struct {
    u_char                       hdr[14];
    size_t                       hdr_len;
    size_t                       hdr_need;
    uint64_t                     payload_left;
} ngx_http_ratethrottle_ws_framer_t;


typedef struct {
    ngx_http_request_t          *request;
    ngx_connection_t            *connection;
    ngx_http_ratethrottle_zone_t      *zone;
    ngx_http_ratethrottle_loc_conf_t  *lcf;

    rt_conn                      conn;
    rt_reason                    reason;
    uint64_t                     retry_after_ms;

    ngx_recv_pt                  orig_recv;
    ngx_send_pt                  orig_send;

    ngx_http_ratethrottle_ws_framer_t  in;
    ngx_http_ratethrottle_ws_framer_t  out;
    uint64_t                     message_len;
    uint16_t                     close_code;

    ngx_event_t                  close_timer;

    unsigned                     decided:1;
    unsigned                     hooked:1;
    unsigned                     in_message:1;
    unsigned                     closing:1;
    unsigned                     close_sent:1;
    unsigned                     no_wait:1;
    unsigned                     client_closed:1;
    unsigned                     close_timedout:1;
} ngx_http_ratethrottle_ctx_t;


static ngx_int_t ngx_http_ratethrottle_handler(ngx_http_request_t *r);
static ngx_http_ratethrottle_ctx_t *ngx_http_ratethrottle_get_ctx(
    ngx_http_request_t *r);
static void ngx_http_ratethrottle_cleanup(void *data);
static void ngx_http_ratethrottle_note(ngx_http_ratethrottle_ctx_t *ctx,
    rt_decision *d, const char *what, uint64_t size);
static ngx_uint_t ngx_http_ratethrottle_ws_verdict(
    ngx_http_ratethrottle_ctx_t *ctx, rt_decision *d, const char *what,
    uint64_t size);
static ngx_int_t ngx_http_ratethrottle_header_filter(ngx_http_request_t *r);
static ngx_uint_t ngx_http_ratethrottle_is_websocket(ngx_http_request_t *r);
static ssize_t ngx_http_ratethrottle_recv(ngx_connection_t *c, u_char *buf,
    size_t size);
static ssize_t ngx_http_ratethrottle_send(ngx_connection_t *c, u_char *buf,
    size_t size);
static size_t ngx_http_ratethrottle_ws_parse(ngx_http_ratethrottle_ctx_t *ctx,
    u_char *buf, size_t len);
static ngx_uint_t ngx_http_ratethrottle_ws_frame(
    ngx_http_ratethrottle_ctx_t *ctx);
static ngx_int_t ngx_http_ratethrottle_ws_close(
    ngx_http_ratethrottle_ctx_t *ctx);
static ssize_t ngx_http_ratethrottle_ws_finish(
    ngx_http_ratethrottle_ctx_t *ctx);
static void ngx_http_ratethrottle_close_timeout(ngx_event_t *ev);
static ngx_int_t ngx_http_ratethrottle_status_handler(ngx_http_request_t *r);

static ngx_int_t ngx_http_ratethrottle_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_ratethrottle_reason_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_ratethrottle_retry_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);

static void *ngx_http_ratethrottle_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_ratethrottle_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_ratethrottle_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_ratethrottle_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_ratethrottle(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_ratethrottle_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_ratethrottle_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_ratethrottle_zone_cleanup(void *data);
static ngx_int_t ngx_http_ratethrottle_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_ratethrottle_init_process(ngx_cycle_t *cycle);


static ngx_conf_enum_t  ngx_http_ratethrottle_log_levels[] = {
    { ngx_string("info"), NGX_LOG_INFO },
    { ngx_string("notice"), NGX_LOG_NOTICE },
    { ngx_string("warn"), NGX_LOG_WARN },
    { ngx_string("error"), NGX_LOG_ERR },
    { ngx_null_string, 0 }
};


static ngx_conf_num_bounds_t  ngx_http_ratethrottle_status_bounds = {
    ngx_conf_check_num_bounds, 400, 599
};


static ngx_command_t  ngx_http_ratethrottle_commands[] = {

    { ngx_string("ratethrottle_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_ratethrottle_zone,
      0,
      0,
      NULL },

    { ngx_string("ratethrottle"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE123,
      ngx_http_ratethrottle,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratethrottle_status_code"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratethrottle_loc_conf_t, status_code),
      &ngx_http_ratethrottle_status_bounds },

    { ngx_string("ratethrottle_log_level"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratethrottle_loc_conf_t, log_level),
      &ngx_http_ratethrottle_log_levels },

    { ngx_string("ratethrottle_dry_run"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratethrottle_loc_conf_t, dry_run),
      NULL },

    { ngx_string("ratethrottle_control_frames"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratethrottle_loc_conf_t, control_frames),
      NULL },

    { ngx_string("ratethrottle_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ratethrottle_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_ratethrottle_module_ctx = {
    ngx_http_ratethrottle_add_variables,   /* preconfiguration */
    ngx_http_ratethrottle_init,            /* postconfiguration */

    ngx_http_ratethrottle_create_main_conf, /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_ratethrottle_create_loc_conf, /* create location configuration */
    ngx_http_ratethrottle_merge_loc_conf   /* merge location configuration */
};


ngx_module_t  ngx_http_ratethrottle_module = {
    NGX_MODULE_V1,
    &ngx_http_ratethrottle_module_ctx,     /* module context */
    ngx_http_ratethrottle_commands,        /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_ratethrottle_init_process,    /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_variable_t  ngx_http_ratethrottle_vars[] = {

    { ngx_string("ratethrottle_reason"), NULL,
      ngx_http_ratethrottle_reason_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ratethrottle_retry_after"), NULL,
      ngx_http_ratethrottle_retry_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;

static ngx_event_t  ngx_http_ratethrottle_reap_event;


/* the request phase: one connect per main request */

static ngx_int_t
ngx_http_ratethrottle_handler(ngx_http_request_t *r)
{
    rt_conn                            conn;
    uint64_t                           secs;
    ngx_str_t                          key;
    rt_decision                        d;
    ngx_table_elt_t                   *h;
    ngx_pool_cleanup_t                *cln;
    ngx_http_ratethrottle_ctx_t       *ctx;
    ngx_http_ratethrottle_zone_t      *zone;
    ngx_http_ratethrottle_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_ratethrottle_module);

    if (lcf->shm_zone == NULL || lcf->off) {
        return NGX_DECLINED;
    }

    if (r != r->main) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_ratethrottle_get_ctx(r);

    if (ctx != NULL && ctx->decided) {
        /* already decided (internal redirect): one connect per request */
        return NGX_DECLINED;
    }

    zone = lcf->shm_zone->data;

    if (zone->lim == NULL) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "ratethrottle zone \"%V\" is not initialised",
                      &zone->name);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_complex_value(r, &zone->key, &key) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (key.len == 0) {
        /* like limit_req and limit_conn: an empty key is not limited */
        return NGX_DECLINED;
    }

    if (ctx == NULL) {
        cln = ngx_pool_cleanup_add(r->pool,
                                   sizeof(ngx_http_ratethrottle_ctx_t));
        if (cln == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx = cln->data;
        ngx_memzero(ctx, sizeof(ngx_http_ratethrottle_ctx_t));
        ctx->request = r;
        ctx->connection = r->connection;

        cln->handler = ngx_http_ratethrottle_cleanup;
        ngx_http_set_ctx(r, ctx, ngx_http_ratethrottle_module);
    }

    ctx->zone = zone;
    ctx->lcf = lcf;
    ctx->decided = 1;

    conn = 0;
    d = rt_connect(zone->lim, key.data, key.len, &conn);

    ngx_http_ratethrottle_note(ctx, &d, "connection", 1);

    if (d.allowed) {
        ctx->conn = conn;
        return NGX_DECLINED;
    }

    if (lcf->deny_dry_run) {
        return NGX_DECLINED;
    }

    if (d.retry_after_ms != RT_RETRY_NEVER) {
        secs = (d.retry_after_ms + 999) / 1000;
        if (secs == 0) {
            /* a concurrency denial: retry when a connection closes */
            secs = 1;
        }

        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->value.data = ngx_pnalloc(r->pool, NGX_INT64_LEN);
        if (h->value.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Retry-After");
        h->value.len = ngx_sprintf(h->value.data, "%uL", secs)
                       - h->value.data;
    }

    return lcf->deny_status;
}


/*
 * The ctx lives in the data of a cleanup of the request pool, so it survives
 * an internal redirect (which clears the module ctx) and its cleanup runs
 * however the request ends.
 */

static ngx_http_ratethrottle_ctx_t *
ngx_http_ratethrottle_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t           *cln;
    ngx_http_ratethrottle_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratethrottle_module);
    if (ctx != NULL) {
        return ctx;
    }

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_ratethrottle_cleanup) {
            ctx = cln->data;
            ngx_http_set_ctx(r, ctx, ngx_http_ratethrottle_module);
            return ctx;
        }
    }

    return NULL;
}


static void
ngx_http_ratethrottle_cleanup(void *data)
{
    ngx_http_ratethrottle_ctx_t  *ctx = data;

    ngx_connection_t  *c;

    c = ctx->connection;

    if (ctx->close_timer.timer_set) {
        ngx_del_timer(&ctx->close_timer);
    }

    if (ctx->hooked) {
        if (c->recv == ngx_http_ratethrottle_recv) {
            c->recv = ctx->orig_recv;
        }

        if (c->send == ngx_http_ratethrottle_send) {
            c->send = ctx->orig_send;
        }

        ctx->hooked = 0;
    }

    if (ctx->conn != 0) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                       "ratethrottle disconnect %uL", ctx->conn);

        rt_disconnect(ctx->zone->lim, ctx->conn);
        ctx->conn = 0;
    }
}


/* records a decision for the variables and logs denials */

static void
ngx_http_ratethrottle_note(ngx_http_ratethrottle_ctx_t *ctx, rt_decision *d,
    const char *what, uint64_t size)
{
    ngx_uint_t  level;

    ctx->reason = d->reason;
    ctx->retry_after_ms = d->retry_after_ms;

    if (d->reason == RT_OK) {
        return;
    }

    level = ctx->lcf->log_level;

    if (d->allowed) {
        /* engine dry run (zone flag) or an untracked fail-open connect */
        ngx_log_error(level, ctx->connection->log, 0,
                      "ratethrottle: %s allowed with reason \"%s\" "
                      "(dry run or fail open), size %uL, limit %uL, "
                      "current %uL, by zone \"%V\"",
                      what, rt_reason_str(d->reason), size, d->limit,
                      d->current, &ctx->zone->name);
        return;
    }

    ngx_log_error(level, ctx->connection->log, 0,
                  "ratethrottle: %s%s denied, reason \"%s\", size %uL, "
                  "limit %uL, current %uL, retry after %uL ms, by zone \"%V\"",
                  ctx->lcf->deny_dry_run ? "dry run, " : "", what,
                  rt_reason_str(d->reason), size, d->limit, d->current,
                  d->retry_after_ms, &ctx->zone->name);
}


/*
 * Records a WebSocket frame's decision (ngx_http_ratethrottle_note) and
 * says what it means for the connection: 0 lets the frame through (allowed,
 * or denied in dry-run mode), else the close code to send.
 */

static ngx_uint_t
ngx_http_ratethrottle_ws_verdict(ngx_http_ratethrottle_ctx_t *ctx,
    rt_decision *d, const char *what, uint64_t size)
{
    ngx_http_ratethrottle_note(ctx, d, what, size);

    if (d->allowed || ctx->lcf->deny_dry_run) {
        return 0;
    }

    return d->reason == RT_MESSAGE_TOO_LARGE ? NGX_HTTP_RATETHROTTLE_WS_TOO_BIG
                                             : NGX_HTTP_RATETHROTTLE_WS_POLICY;
}


/* after the 101: hook the client connection of an upgraded request */

static ngx_int_t
ngx_http_ratethrottle_header_filter(ngx_http_request_t *r)
{
    size_t                        n, k;
    ngx_buf_t                    *b;
    ngx_connection_t             *c;
    ngx_http_ratethrottle_ctx_t  *ctx;

    if (r != r->main
        || r->headers_out.status != NGX_HTTP_SWITCHING_PROTOCOLS
        || r->upstream == NULL
        || !r->upstream->upgrade)
    {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_ratethrottle_get_ctx(r);

    if (ctx == NULL || ctx->conn == 0 || ctx->hooked) {
        return ngx_http_next_header_filter(r);
    }

    c = r->connection;

    if (!ngx_http_ratethrottle_is_websocket(r)) {
        /*
         * another protocol (a raw TCP tunnel, h2c, SPDY...): its bytes are
         * not WebSocket frames; the request keeps its connection slot
         */
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                       "ratethrottle: upgrade is not to WebSocket");
        return ngx_http_next_header_filter(r);
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "ratethrottle: watching WebSocket frames");

    ctx->orig_recv = c->recv;
    ctx->orig_send = c->send;
    c->recv = ngx_http_ratethrottle_recv;
    c->send = ngx_http_ratethrottle_send;
    ctx->hooked = 1;

    /*
     * Bytes the client sent after the request headers (frames sent before
     * the 101 arrived) wait in r->header_in; the upstream module forwards
     * them first, without calling c->recv, so they are parsed here.
     */

    b = r->header_in;

    if (b != NULL && b->last > b->pos) {
        n = b->last - b->pos;
        k = ngx_http_ratethrottle_ws_parse(ctx, b->pos, n);

        if (k < n) {
            /* forward what passed (an incomplete header is held back) */
            b->last = b->pos + k;

            if (ctx->closing) {
                /* close when the relay reads */
                c->read->ready = 1;
                ngx_post_event(c->read, &ngx_posted_events);
            }
        }
    }

    return ngx_http_next_header_filter(r);
}


/*
 * The upstream switched to WebSocket: its 101 names "websocket" in the
 * Upgrade header (RFC 6455 4.2.2; a client fails the handshake without it).
 */

static ngx_uint_t
ngx_http_ratethrottle_is_websocket(ngx_http_request_t *r)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_out.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash == 0
            || h[i].key.len != sizeof("Upgrade") - 1
            || ngx_strncasecmp(h[i].key.data, (u_char *) "Upgrade",
                               sizeof("Upgrade") - 1)
               != 0)
        {
            continue;
        }

        if (ngx_strlcasestrn(h[i].value.data,
                             h[i].value.data + h[i].value.len,
                             (u_char *) "websocket", sizeof("websocket") - 2)
            != NULL)
        {
            return 1;
        }
    }

    return 0;
}


static ssize_t
ngx_http_ratethrottle_recv(ngx_connection_t *c, u_char *buf, size_t size)
{
    size_t                        k, held;
    ssize_t                       n;
    ngx_http_request_t           *r;
    ngx_http_ratethrottle_ctx_t  *ctx;

    r = c->data;
    ctx = ngx_http_ratethrottle_get_ctx(r);

    if (r->upstream == NULL || r->upstream->peer.connection == NULL) {
        /* the relay is over (e.g. lingering close): pass through */
        return ctx->orig_recv(c, buf, size);
    }

    if (ctx->closing) {

        if (!ctx->close_sent) {
            if (ngx_http_ratethrottle_ws_close(ctx) != NGX_OK
                || ctx->no_wait)
            {
                return ngx_http_ratethrottle_ws_finish(ctx);
            }

            ctx->close_timer.handler = ngx_http_ratethrottle_close_timeout;
            ctx->close_timer.data = ctx;
            ctx->close_timer.log = c->log;
            ngx_add_timer(&ctx->close_timer,
                          NGX_HTTP_RATETHROTTLE_CLOSE_WAIT_MS);
        }

        /*
         * Wait for the client's Close frame, reading and discarding what it
         * sends meanwhile (nothing more goes upstream): closing the socket
         * while the client still writes would answer with a reset, which
         * can destroy our Close frame before the client reads it.
         */

        for ( ;; ) {
            if (ctx->client_closed || ctx->close_timedout || ctx->no_wait) {
                return ngx_http_ratethrottle_ws_finish(ctx);
            }

            n = ctx->orig_recv(c, buf, size);

            if (n == NGX_AGAIN) {
                return NGX_AGAIN;
            }

            if (n <= 0) {
                return ngx_http_ratethrottle_ws_finish(ctx);
            }

            (void) ngx_http_ratethrottle_ws_parse(ctx, buf, (size_t) n);
        }
    }

    /*
     * An incomplete frame header left by the last read was not forwarded
     * (ngx_http_ratethrottle_ws_parse): it goes first, before the new bytes,
     * and is parsed again with them.
     */

    held = ctx->in.hdr_len;

    for ( ;; ) {

        if (held) {
            if (size <= held) {
                /* no room: the relay calls again once it wrote upstream */
                return NGX_AGAIN;
            }

            ngx_memcpy(buf, ctx->in.hdr, held);
        }

        n = ctx->orig_recv(c, buf + held, size - held);

        if (n <= 0) {
            /* the held header stays in ctx->in */
            return n;
        }

        ctx->in.hdr_len = 0;
        ctx->in.hdr_need = 0;
        n += held;

        k = ngx_http_ratethrottle_ws_parse(ctx, buf, (size_t) n);

        if (k == (size_t) n) {
            return n;
        }

        if (ctx->closing) {
            break;
        }

        if (k > 0) {
            /* complete frames pass; the incomplete header is held */
            return (ssize_t) k;
        }

        /* nothing but an incomplete header yet: read on */
        held = ctx->in.hdr_len;
    }

    /* forward the frames that passed; the next call sends the Close */
    c->read->ready = 1;

    if (k == 0) {
        return ngx_http_ratethrottle_recv(c, buf, size);
    }

    return (ssize_t) k;
}


/* ends the relay from the client side: nginx then closes both sides */

static ssize_t
ngx_http_ratethrottle_ws_finish(ngx_http_ratethrottle_ctx_t *ctx)
{
    u_char             drain[4096];
    ssize_t            n;
    ngx_uint_t         i;
    ngx_connection_t  *c;

    c = ctx->connection;

    if (ctx->close_timer.timer_set) {
        ngx_del_timer(&ctx->close_timer);
    }

    if (!ctx->client_closed && !c->read->eof) {
        /*
         * The client did not answer: send FIN after what was sent and
         * drain what it already wrote (bounded), to make a reset less
         * likely when nginx closes the socket right after.
         */

        if (shutdown(c->fd, SHUT_WR) == -1) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, ngx_socket_errno,
                           "ratethrottle: shutdown() failed");
        }

        for (i = 0; i < 16; i++) {
            n = ctx->orig_recv(c, drain, sizeof(drain));
            if (n <= 0) {
                break;
            }
        }
    }

    c->read->ready = 0;
    c->read->eof = 1;

    return NGX_ERROR;
}


static void
ngx_http_ratethrottle_close_timeout(ngx_event_t *ev)
{
    ngx_connection_t             *c;
    ngx_http_ratethrottle_ctx_t  *ctx;

    ctx = ev->data;
    c = ctx->connection;

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "ratethrottle: no Close frame from the client in %d ms",
                  NGX_HTTP_RATETHROTTLE_CLOSE_WAIT_MS);

    ctx->close_timedout = 1;

    /* let the relay read again: the recv hook then ends it */
    c->read->ready = 1;
    c->read->handler(c->read);
}


/* tracks frame boundaries of server-to-client bytes, to place a Close */

static ssize_t
ngx_http_ratethrottle_send(ngx_connection_t *c, u_char *buf, size_t size)
{
    size_t                              i, take;
    ssize_t                             n;
    u_char                              len7;
    ngx_http_request_t                 *r;
    ngx_http_ratethrottle_ctx_t        *ctx;
    ngx_http_ratethrottle_ws_framer_t  *f;

    r = c->data;
    ctx = ngx_http_ratethrottle_get_ctx(r);

    if (ctx->close_sent) {
        /* nothing may follow a Close frame: drop what the upstream sends */
        return (ssize_t) size;
    }

    n = ctx->orig_send(c, buf, size);

    if (n <= 0) {
        return n;
    }

    f = &ctx->out;
    i = 0;

    while (i < (size_t) n) {

        if (f->payload_left) {
            take = ngx_min((uint64_t) ((size_t) n - i), f->payload_left);
            i += take;
            f->payload_left -= take;
            continue;
        }

        f->hdr[f->hdr_len++] = buf[i++];

        if (f->hdr_len == 2) {
            len7 = f->hdr[1] & 0x7f;
            f->hdr_need = 2 + (len7 == 126 ? 2 : (len7 == 127 ? 8 : 0))
                          + ((f->hdr[1] & 0x80) ? 4 : 0);
        }

        if (f->hdr_len >= 2 && f->hdr_len == f->hdr_need) {
            len7 = f->hdr[1] & 0x7f;

            if (len7 == 126) {
                f->payload_left = ((uint64_t) f->hdr[2] << 8) | f->hdr[3];

            } else if (len7 == 127) {
                f->payload_left = ((uint64_t) f->hdr[2] << 56)
                                  | ((uint64_t) f->hdr[3] << 48)
                                  | ((uint64_t) f->hdr[4] << 40)
                                  | ((uint64_t) f->hdr[5] << 32)
                                  | ((uint64_t) f->hdr[6] << 24)
                                  | ((uint64_t) f->hdr[7] << 16)
                                  | ((uint64_t) f->hdr[8] << 8)
                                  | (uint64_t) f->hdr[9];

            } else {
                f->payload_left = len7;
            }

            f->hdr_len = 0;
            f->hdr_need = 0;
        }
    }

    return n;
}


/*
 * Parses client-to-upstream bytes. Returns how many of the len bytes may be
 * forwarded: len when everything passed, the offset (in buf) of an
 * incomplete frame header that ends them (held back in ctx->in.hdr), or the
 * offset of the frame that was refused; ctx->closing and ctx->close_code are
 * then set. Once
 * closing, frames are only followed (nothing is checked or forwarded) until
 * the client's Close frame, which sets ctx->client_closed.
 */

static size_t
ngx_http_ratethrottle_ws_parse(ngx_http_ratethrottle_ctx_t *ctx, u_char *buf,
    size_t len)
{
    size_t                              i, take, frame_start, pass;
    u_char                              len7;
    ngx_uint_t                          code;
    ngx_http_ratethrottle_ws_framer_t  *f;

    f = &ctx->in;
    i = 0;
    frame_start = 0;
    pass = ctx->closing ? 0 : len;

    while (i < len) {

        if (f->payload_left) {
            take = ngx_min((uint64_t) (len - i), f->payload_left);
            i += take;
            f->payload_left -= take;
            continue;
        }

        if (f->hdr_len == 0) {
            frame_start = i;
        }

        f->hdr[f->hdr_len++] = buf[i++];

        if (f->hdr_len == 2) {
            len7 = f->hdr[1] & 0x7f;
            f->hdr_need = 2 + (len7 == 126 ? 2 : (len7 == 127 ? 8 : 0))
                          + ((f->hdr[1] & 0x80) ? 4 : 0);
        }

        if (f->hdr_len < 2 || f->hdr_len < f->hdr_need) {
            continue;
        }

        code = ngx_http_ratethrottle_ws_frame(ctx);

        f->hdr_len = 0;
        f->hdr_need = 0;

        if (code) {
            /* refused: nothing from here on is forwarded; the framing of
               the rest is still followed, to see the client's Close */
            ctx->closing = 1;
            ctx->close_code = (uint16_t) code;
            pass = frame_start;

            if (code == NGX_HTTP_RATETHROTTLE_WS_PROTOCOL_ERROR) {
                /* the framing cannot be trusted: do not wait */
                ctx->no_wait = 1;
                return pass;
            }
        }
    }

    if (!ctx->closing && f->hdr_len) {
        /*
         * An incomplete frame header ends the bytes: it is held back (the
         * caller keeps it in f->hdr and puts it before the next bytes), so
         * no byte of a frame, its length included, is forwarded before the
         * frame is decided. Every byte of it is in buf: a header held from
         * an earlier read was put before these bytes and parsed again.
         */
        pass = len - f->hdr_len;
    }

    return pass;
}


/* a complete frame header is in ctx->in.hdr: decide the frame */

static ngx_uint_t
ngx_http_ratethrottle_ws_frame(ngx_http_ratethrottle_ctx_t *ctx)
{
    u_char                              op, len7;
    uint64_t                            plen;
    ngx_uint_t                          fin, masked;
    rt_decision                         d;
    ngx_connection_t                   *c;
    ngx_http_ratethrottle_zone_t       *zone;
    ngx_http_ratethrottle_ws_framer_t  *f;

    f = &ctx->in;
    c = ctx->connection;
    zone = ctx->zone;

    fin = f->hdr[0] & 0x80;
    op = f->hdr[0] & 0x0f;
    masked = f->hdr[1] & 0x80;
    len7 = f->hdr[1] & 0x7f;

    if (len7 == 126) {
        plen = ((uint64_t) f->hdr[2] << 8) | f->hdr[3];

    } else if (len7 == 127) {
        if (f->hdr[2] & 0x80) {
            ngx_log_error(ctx->lcf->log_level, c->log, 0,
                          "ratethrottle: WebSocket frame length with "
                          "the most significant bit set");
            return NGX_HTTP_RATETHROTTLE_WS_PROTOCOL_ERROR;
        }

        plen = ((uint64_t) f->hdr[2] << 56)
               | ((uint64_t) f->hdr[3] << 48)
               | ((uint64_t) f->hdr[4] << 40)
               | ((uint64_t) f->hdr[5] << 32)
               | ((uint64_t) f->hdr[6] << 24)
               | ((uint64_t) f->hdr[7] << 16)
               | ((uint64_t) f->hdr[8] << 8)
               | (uint64_t) f->hdr[9];

    } else {
        plen = len7;
    }

    f->payload_left = plen;

    if (ctx->closing) {
        if (op == 0x8) {
            ctx->client_closed = 1;
        }

        return 0;
    }

    if (!masked) {
        ngx_log_error(ctx->lcf->log_level, c->log, 0,
                      "ratethrottle: unmasked WebSocket frame from client");
        return NGX_HTTP_RATETHROTTLE_WS_PROTOCOL_ERROR;
    }

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "ratethrottle: ws frame op:%ui fin:%ui len:%uL msg:%uL",
                   (ngx_uint_t) op, fin ? 1 : 0, plen, ctx->message_len);

    if (op & 0x08) {
        /* control frames (close, ping, pong) are not messages */
        if (op > 0x0a || !fin || plen > 125) {
            ngx_log_error(ctx->lcf->log_level, c->log, 0,
                          "ratethrottle: invalid WebSocket control frame "
                          "(opcode %ui, fin %ui, length %uL)",
                          (ngx_uint_t) op, fin ? 1 : 0, plen);
            return NGX_HTTP_RATETHROTTLE_WS_PROTOCOL_ERROR;
        }

        if (op == 0x8 || !ctx->lcf->control_frames) {
            return 0;
        }

        /*
         * "ratethrottle_control_frames on": a ping or pong is checked like
         * the first frame of a message (one message against the message
         * rate, its payload against the byte budget), so a ping flood is
         * closed with 1008 like a message flood. It leaves a fragmented
         * message it interrupts as it was.
         */

        d = rt_check_message(zone->lim, ctx->conn, plen);

        return ngx_http_ratethrottle_ws_verdict(ctx, &d, "control frame",
                                                plen);
    }

    if (op == 0x0) {
        if (!ctx->in_message) {
            ngx_log_error(ctx->lcf->log_level, c->log, 0,
                          "ratethrottle: WebSocket continuation frame "
                          "outside a message");
            return NGX_HTTP_RATETHROTTLE_WS_PROTOCOL_ERROR;
        }

        ctx->message_len = (plen > UINT64_MAX - ctx->message_len)
                           ? UINT64_MAX : ctx->message_len + plen;

        /*
         * A continuation frame adds its bytes to the byte budgets and no
         * message to the message rates; max_message_size applies to the
         * whole message so far (the engine's rt_check_continuation).
         */

        d = rt_check_continuation(zone->lim, ctx->conn, plen,
                                  ctx->message_len);

        if (fin) {
            ctx->in_message = 0;
        }

        return ngx_http_ratethrottle_ws_verdict(ctx, &d, "message", plen);

    } else if (op == 0x1 || op == 0x2) {
        if (ctx->in_message) {
            ngx_log_error(ctx->lcf->log_level, c->log, 0,
                          "ratethrottle: new WebSocket message inside "
                          "a fragmented one");
            return NGX_HTTP_RATETHROTTLE_WS_PROTOCOL_ERROR;
        }

        ctx->message_len = plen;
        ctx->in_message = fin ? 0 : 1;

    } else {
        ngx_log_error(ctx->lcf->log_level, c->log, 0,
                      "ratethrottle: reserved WebSocket opcode %ui",
                      (ngx_uint_t) op);
        return NGX_HTTP_RATETHROTTLE_WS_PROTOCOL_ERROR;
    }

    /*
     * The first frame of a message is checked as it arrives, before its
     * payload is forwarded: it counts as one message against the message
     * rate and its length against the byte budget.
     */

    d = rt_check_message(zone->lim, ctx->conn, plen);

    return ngx_http_ratethrottle_ws_verdict(ctx, &d, "message", plen);
}


/*
 * Sends a Close frame to the client, if a frame boundary allows it; NGX_OK
 * when it was written in full.
 */

static ngx_int_t
ngx_http_ratethrottle_ws_close(ngx_http_ratethrottle_ctx_t *ctx)
{
    size_t             len, rlen;
    ssize_t            n;
    u_char             frame[2 + 2 + 64];
    const char        *reason;
    ngx_connection_t  *c;

    if (ctx->close_sent) {
        return NGX_DECLINED;
    }

    c = ctx->connection;

    ctx->close_sent = 1;

    if (ctx->out.hdr_len != 0 || ctx->out.payload_left != 0 || c->buffered) {
        /*
         * inside an upstream frame, or the 101 response itself not yet
         * written out: a Close now would corrupt the stream
         */
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "ratethrottle: closing without a Close frame "
                      "(upstream frame in progress)");
        return NGX_DECLINED;
    }

    reason = ctx->close_code == NGX_HTTP_RATETHROTTLE_WS_PROTOCOL_ERROR
             ? "protocol_error" : rt_reason_str(ctx->reason);

    rlen = ngx_min(ngx_strlen(reason), 64);

    frame[0] = 0x88;
    frame[1] = (u_char) (2 + rlen);
    frame[2] = (u_char) (ctx->close_code >> 8);
    frame[3] = (u_char) (ctx->close_code & 0xff);
    ngx_memcpy(&frame[4], reason, rlen);
    len = 4 + rlen;

    n = ctx->orig_send(c, frame, len);

    if (n != (ssize_t) len) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "ratethrottle: Close frame not sent in full");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* the status location: JSON, or Prometheus text with ?format=prometheus */

static ngx_int_t
ngx_http_ratethrottle_status_handler(ngx_http_request_t *r)
{
    size_t                         size, n;
    u_char                        *p;
    ngx_int_t                      rc;
    ngx_str_t                      format, name, *accept;
    ngx_buf_t                     *b;
    ngx_uint_t                     i, prometheus;
    ngx_chain_t                    out;
    rt_stats                       st;
    rt_status                      s;
    ngx_http_ratethrottle_zone_t  *zone;
    ngx_http_ratethrottle_loc_conf_t  *lcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_ratethrottle_module);
    zone = lcf->status_zone->data;

    if (zone->lim == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    prometheus = 0;

    if (ngx_http_arg(r, (u_char *) "format", 6, &format) == NGX_OK) {
        if (format.len == 10
            && ngx_strncmp(format.data, "prometheus", 10) == 0)
        {
            prometheus = 1;

        } else if (!(format.len == 4
                     && ngx_strncmp(format.data, "json", 4) == 0))
        {
            return NGX_HTTP_BAD_REQUEST;
        }

#if (NGX_HTTP_HEADERS)
    } else if (r->headers_in.accept != NULL) {
        /*
         * a Prometheus scraper asks for text/plain (or OpenMetrics) and
         * never for JSON; a client that names application/json (such as
         * "application/json, text/plain, *\/\*", the default of many HTTP
         * libraries) gets JSON
         */
        accept = &r->headers_in.accept->value;

        if ((ngx_strlcasestrn(accept->data, accept->data + accept->len,
                              (u_char *) "text/plain", 10 - 1)
             != NULL
             || ngx_strlcasestrn(accept->data, accept->data + accept->len,
                                 (u_char *) "application/openmetrics-text",
                                 28 - 1)
                != NULL)
            && ngx_strlcasestrn(accept->data, accept->data + accept->len,
                                (u_char *) "application/json", 16 - 1)
               == NULL)
        {
            prometheus = 1;
        }
#endif
    }

    if (prometheus) {
        /* room for counters that grow between the two calls */
        size = rt_stats_prometheus(zone->lim, NULL, 0) + 1024;

        b = ngx_create_temp_buf(r->pool, size);
        if (b == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        n = rt_stats_prometheus(zone->lim, (char *) b->pos, size);
        b->last = b->pos + ngx_min(n, size - 1);

        ngx_str_set(&r->headers_out.content_type,
                    "text/plain; version=0.0.4");

    } else {
        ngx_memzero(&st, sizeof(rt_stats));
        st.struct_size = sizeof(rt_stats);

        s = rt_limiter_stats(zone->lim, &st);
        if (s != RT_STATUS_OK) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "ratethrottle: stats failed: %s", rt_status_str(s));
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        name.len = zone->name.len
                   + ngx_escape_json(NULL, zone->name.data, zone->name.len);
        name.data = ngx_pnalloc(r->pool, name.len);
        if (name.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_escape_json(name.data, zone->name.data, zone->name.len);

        size = 2048 + name.len + RT_REASON_COUNT * 64;

        b = ngx_create_temp_buf(r->pool, size);
        if (b == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p = b->last;

        p = ngx_sprintf(p, "{\"zone\":\"%V\",\"version\":\"%s\","
                        "\"active_connections\":%uL,\"unique_clients\":%uL,"
                        "\"total_messages\":%uL,\"total_bytes\":%uL,"
                        "\"connections_allowed\":%uL,"
                        "\"messages_allowed\":%uL,\"denied\":{",
                        &name, rt_version(),
                        st.active_connections, st.unique_clients,
                        st.total_messages, st.total_bytes,
                        st.connections_allowed, st.messages_allowed);

        for (i = 1; i < RT_REASON_COUNT; i++) {
            p = ngx_sprintf(p, "%s\"%s\":%uL", i > 1 ? "," : "",
                            rt_reason_str((rt_reason) i), st.denied[i]);
        }

        p = ngx_sprintf(p, "},\"tracked_clients\":%uL,\"max_clients\":%uL,"
                        "\"max_connections\":%uL,\"violations_dropped\":%uL,"
                        "\"dry_run_denied\":%uL,\"untracked_allowed\":%uL,"
                        "\"limits\":{\"window_ms\":%uD,"
                        "\"connections_per_window\":%uD,"
                        "\"max_concurrent_connections\":%uD,"
                        "\"messages_per_window\":%uD,"
                        "\"bytes_per_window\":%uL,\"max_message_size\":%uD,"
                        "\"client_messages_per_window\":%uD,"
                        "\"client_bytes_per_window\":%uL,"
                        "\"fail_open\":%s,\"dry_run\":%s}}\n",
                        st.tracked_clients, st.max_clients,
                        st.max_connections, st.violations_dropped,
                        st.dry_run_denied, st.untracked_allowed,
                        st.limits.window_ms, st.limits.connections_per_window,
                        st.limits.max_concurrent_connections,
                        st.limits.messages_per_window,
                        st.limits.bytes_per_window,
                        st.limits.max_message_size,
                        st.limits.client_messages_per_window,
                        st.limits.client_bytes_per_window,
                        (st.limits.flags & RT_FLAG_FAIL_OPEN) ? "true"
                                                              : "false",
                        (st.limits.flags & RT_FLAG_DRY_RUN) ? "true"
                                                            : "false");
        b->last = p;

        ngx_str_set(&r->headers_out.content_type, "application/json");
    }

    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* variables */

static ngx_int_t
ngx_http_ratethrottle_reason_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    const char                   *s;
    ngx_http_ratethrottle_ctx_t  *ctx;

    ctx = ngx_http_ratethrottle_get_ctx(r->main);

    if (ctx == NULL || !ctx->decided) {
        v->not_found = 1;
        return NGX_OK;
    }

    s = rt_reason_str(ctx->reason);

    v->len = ngx_strlen(s);
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = (u_char *) s;

    return NGX_OK;
}


static ngx_int_t
ngx_http_ratethrottle_retry_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                       *p;
    ngx_http_ratethrottle_ctx_t  *ctx;

    ctx = ngx_http_ratethrottle_get_ctx(r->main);

    if (ctx == NULL || !ctx->decided) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (ctx->retry_after_ms == RT_RETRY_NEVER) {
        v->len = ngx_sprintf(p, "-1") - p;

    } else {
        v->len = ngx_sprintf(p, "%uL", (ctx->retry_after_ms + 999) / 1000)
                 - p;
    }

    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = p;

    return NGX_OK;
}


static ngx_int_t
ngx_http_ratethrottle_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_ratethrottle_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/* configuration */

static void *
ngx_http_ratethrottle_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_ratethrottle_main_conf_t  *rmcf;

    rmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_ratethrottle_main_conf_t));
    if (rmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&rmcf->zones, cf->pool, 4,
                       sizeof(ngx_http_ratethrottle_zone_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return rmcf;
}


static void *
ngx_http_ratethrottle_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_ratethrottle_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_ratethrottle_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->shm_zone = NULL;
     *     conf->off = 0;
     */

    conf->status_code = NGX_CONF_UNSET_UINT;
    conf->log_level = NGX_CONF_UNSET_UINT;
    conf->dry_run = NGX_CONF_UNSET;
    conf->control_frames = NGX_CONF_UNSET;

    return conf;
}


static char *
ngx_http_ratethrottle_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_ratethrottle_loc_conf_t  *prev = parent;
    ngx_http_ratethrottle_loc_conf_t  *conf = child;

    if (conf->shm_zone == NULL && !conf->off) {
        conf->shm_zone = prev->shm_zone;
        conf->off = prev->off;
        conf->zone_status = prev->zone_status;
        conf->zone_dry_run = prev->zone_dry_run;
    }

    ngx_conf_merge_uint_value(conf->status_code, prev->status_code,
                              NGX_HTTP_TOO_MANY_REQUESTS);
    ngx_conf_merge_uint_value(conf->log_level, prev->log_level, NGX_LOG_ERR);
    ngx_conf_merge_value(conf->dry_run, prev->dry_run, 0);

    /*
     * The parameters of "ratethrottle zone=... status=... dry_run" go with
     * that directive: a level with its own "ratethrottle zone=..." does not
     * take them from an outer one (it takes the ratethrottle_status_code
     * and ratethrottle_dry_run directives, as limit_req_status).
     */
    conf->deny_status = conf->zone_status ? conf->zone_status
                                          : conf->status_code;
    conf->deny_dry_run = conf->zone_dry_run || conf->dry_run;
    ngx_conf_merge_value(conf->control_frames, prev->control_frames, 0);

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_ratethrottle_parse_count(ngx_str_t *s, uint32_t *out)
{
    ngx_int_t  n;

    n = ngx_atoi(s->data, s->len);
    if (n == NGX_ERROR || n > (ngx_int_t) UINT32_MAX) {
        return NGX_ERROR;
    }

    *out = (uint32_t) n;
    return NGX_OK;
}


static ngx_int_t
ngx_http_ratethrottle_parse_bytes(ngx_str_t *s, uint64_t *out)
{
    off_t  n;

    n = ngx_parse_offset(s);
    if (n == NGX_ERROR) {
        return NGX_ERROR;
    }

    *out = (uint64_t) n;
    return NGX_OK;
}


static char *
ngx_http_ratethrottle_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    u_char                             *p;
    size_t                              len;
    ssize_t                             size;
    uint64_t                            bytes;
    ngx_str_t                          *value, name, s;
    ngx_int_t                           ms;
    ngx_uint_t                          i, clients_set, conns_set;
    rt_status                           rc;
    rt_limits                           check;
    ngx_shm_zone_t                     *shm_zone;
    ngx_pool_cleanup_t                 *cln;
    ngx_http_ratethrottle_zone_t       *zone, **zp;
    ngx_http_ratethrottle_main_conf_t  *rmcf;
    ngx_http_compile_complex_value_t    ccv;
    char                                err[256];

    value = cf->args->elts;

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_ratethrottle_zone_t));
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = &zone->key;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    rt_limits_default(&zone->limits);

    size = 0;
    name.len = 0;
    clients_set = 0;
    conns_set = 0;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {

            name.data = value[i].data + 5;

            p = (u_char *) ngx_strchr(name.data, ':');

            if (p == NULL) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone size \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            name.len = p - name.data;

            s.data = p + 1;
            s.len = value[i].data + value[i].len - s.data;

            size = ngx_parse_size(&s);

            if (size == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone size \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            if (size < (ssize_t) (8 * ngx_pagesize)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "zone \"%V\" is too small", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "window=", 7) == 0) {
            s.data = value[i].data + 7;
            s.len = value[i].len - 7;

            ms = ngx_parse_time(&s, 0);
            if (ms == NGX_ERROR || ms <= 0 || ms > (ngx_int_t) UINT32_MAX) {
                goto invalid;
            }

            zone->limits.window_ms = (uint32_t) ms;
            continue;
        }

#define RT_COUNT_PARAM(pname, field)                                          \
        if (ngx_strncmp(value[i].data, pname "=", sizeof(pname)) == 0) {      \
            s.data = value[i].data + sizeof(pname);                           \
            s.len = value[i].len - sizeof(pname);                             \
            if (ngx_http_ratethrottle_parse_count(&s, &zone->limits.field)    \
                != NGX_OK)                                                    \
            {                                                                 \
                goto invalid;                                                 \
            }                                                                 \
            continue;                                                         \
        }

#define RT_BYTES_PARAM(pname, field)                                          \
        if (ngx_strncmp(value[i].data, pname "=", sizeof(pname)) == 0) {      \
            s.data = value[i].data + sizeof(pname);                           \
            s.len = value[i].len - sizeof(pname);                             \
            if (ngx_http_ratethrottle_parse_bytes(&s, &bytes) != NGX_OK) {    \
                goto invalid;                                                 \
            }                                                                 \
            zone->limits.field = bytes;                                       \
            continue;                                                         \
        }

        RT_COUNT_PARAM("connections", connections_per_window)
        RT_COUNT_PARAM("concurrent", max_concurrent_connections)
        RT_COUNT_PARAM("messages", messages_per_window)
        RT_COUNT_PARAM("client_messages", client_messages_per_window)
        RT_BYTES_PARAM("bytes", bytes_per_window)
        RT_BYTES_PARAM("client_bytes", client_bytes_per_window)

        if (ngx_strncmp(value[i].data, "max_message_size=", 17) == 0) {
            s.data = value[i].data + 17;
            s.len = value[i].len - 17;
            if (ngx_http_ratethrottle_parse_bytes(&s, &bytes) != NGX_OK
                || bytes > UINT32_MAX)
            {
                goto invalid;
            }
            zone->limits.max_message_size = (uint32_t) bytes;
            continue;
        }

        if (ngx_strncmp(value[i].data, "clients=", 8) == 0) {
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;
            if (ngx_http_ratethrottle_parse_count(&s,
                                                  &zone->limits.max_clients)
                != NGX_OK)
            {
                goto invalid;
            }
            clients_set = 1;
            continue;
        }

        if (ngx_strncmp(value[i].data, "max_connections=", 16) == 0) {
            s.data = value[i].data + 16;
            s.len = value[i].len - 16;
            if (ngx_http_ratethrottle_parse_count(&s,
                                              &zone->limits.max_connections)
                != NGX_OK)
            {
                goto invalid;
            }
            conns_set = 1;
            continue;
        }

#undef RT_COUNT_PARAM
#undef RT_BYTES_PARAM

        if (ngx_strcmp(value[i].data, "fail_open") == 0) {
            zone->limits.flags |= RT_FLAG_FAIL_OPEN;
            continue;
        }

        if (ngx_strcmp(value[i].data, "dry_run") == 0) {
            zone->limits.flags |= RT_FLAG_DRY_RUN;
            continue;
        }

        goto invalid;
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have \"zone\" parameter",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (clients_set != conns_set) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"clients\" and \"max_connections\" must be "
                           "given together (or both left to the zone size)");
        return NGX_CONF_ERROR;
    }

    zone->explicit_capacity = clients_set;

    /* validate now with any capacity; the real ones are set at zone init */

    check = zone->limits;
    if (!clients_set) {
        check.max_clients = 1;
        check.max_connections = 1;
    }

    rc = rt_limits_validate(&check);
    if (rc != RT_STATUS_OK) {
        len = rt_limits_error(&check, err, sizeof(err));
        (void) len;
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ratethrottle_zone \"%V\": %s", &name, err);
        return NGX_CONF_ERROR;
    }

    zone->name = name;

    shm_zone = ngx_shared_memory_add(cf, &name, size,
                                     &ngx_http_ratethrottle_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate zone \"%V\"", &name);
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_ratethrottle_init_zone;
    shm_zone->data = zone;
    zone->shm_zone = shm_zone;

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_ratethrottle_zone_cleanup;
    cln->data = zone;

    rmcf = conf;
    zp = ngx_array_push(&rmcf->zones);
    if (zp == NULL) {
        return NGX_CONF_ERROR;
    }

    *zp = zone;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

    return NGX_CONF_ERROR;
}


static void
ngx_http_ratethrottle_zone_cleanup(void *data)
{
    ngx_http_ratethrottle_zone_t  *zone = data;

    /* frees this process's handles only; the shared region stays */

    rt_limiter_free(zone->lim);
    zone->lim = NULL;
}


static size_t
ngx_http_ratethrottle_region_size(rt_limits *limits, uint32_t n)
{
    rt_limits  l;

    l = *limits;
    l.max_clients = n;
    l.max_connections = n;

    return rt_region_size(&l);
}


static ngx_int_t
ngx_http_ratethrottle_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_ratethrottle_zone_t  *ozone = data;

    size_t                         len, avail;
    uint32_t                       lo, hi, mid;
    rt_status                      rc;
    ngx_slab_pool_t               *shpool;
    ngx_http_ratethrottle_zone_t  *zone;

    zone = shm_zone->data;
    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (ozone) {
        /* a reload that keeps the zone: keep the counters */

        if (zone->key.value.len != ozone->key.value.len
            || ngx_strncmp(zone->key.value.data, ozone->key.value.data,
                           zone->key.value.len)
               != 0)
        {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "ratethrottle_zone \"%V\" uses the \"%V\" key "
                          "while previously it used the \"%V\" key",
                          &shm_zone->shm.name, &zone->key.value,
                          &ozone->key.value);
            return NGX_ERROR;
        }

        if (zone->explicit_capacity
            && (zone->limits.max_clients != ozone->limits.max_clients
                || zone->limits.max_connections
                   != ozone->limits.max_connections))
        {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "ratethrottle_zone \"%V\": clients and "
                          "max_connections cannot change on reload; "
                          "use a new zone name or size",
                          &shm_zone->shm.name);
            return NGX_ERROR;
        }

        zone->limits.max_clients = ozone->limits.max_clients;
        zone->limits.max_connections = ozone->limits.max_connections;
        zone->region = ozone->region;
        zone->region_len = ozone->region_len;

        rc = rt_limiter_attach(zone->region, zone->region_len, &zone->lim);
        if (rc != RT_STATUS_OK) {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "ratethrottle_zone \"%V\": attach failed: %s",
                          &shm_zone->shm.name, rt_status_str(rc));
            return NGX_ERROR;
        }

        rc = rt_limiter_update_limits(zone->lim, &zone->limits);
        if (rc != RT_STATUS_OK) {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "ratethrottle_zone \"%V\": new limits refused: %s",
                          &shm_zone->shm.name, rt_status_str(rc));
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (shm_zone->shm.exists) {
        /* Windows-style inherited mapping: the region is already there */
        zone->region = shpool->data;
        zone->region_len = rt_region_size(&zone->limits);

        rc = rt_limiter_attach(zone->region, zone->region_len, &zone->lim);
        if (rc != RT_STATUS_OK) {
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (!zone->explicit_capacity) {
        /* the largest equal capacities whose region fits in the zone */

        avail = shpool->pfree * ngx_pagesize;
        avail = (avail > ngx_pagesize) ? avail - ngx_pagesize : 0;

        lo = 0;
        hi = NGX_HTTP_RATETHROTTLE_MAX_CAPACITY;

        while (lo < hi) {
            mid = lo + (hi - lo + 1) / 2;
            len = ngx_http_ratethrottle_region_size(&zone->limits, mid);

            if (len != 0 && len <= avail) {
                lo = mid;

            } else {
                hi = mid - 1;
            }
        }

        if (lo == 0) {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "ratethrottle_zone \"%V\" is too small",
                          &shm_zone->shm.name);
            return NGX_ERROR;
        }

        zone->limits.max_clients = lo;
        zone->limits.max_connections = lo;
    }

    len = rt_region_size(&zone->limits);
    if (len == 0) {
        return NGX_ERROR;
    }

    zone->region = ngx_slab_alloc(shpool, len);
    if (zone->region == NULL) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "ratethrottle_zone \"%V\" is too small for "
                      "clients=%uD max_connections=%uD (%uz bytes needed)",
                      &shm_zone->shm.name, zone->limits.max_clients,
                      zone->limits.max_connections, len);
        return NGX_ERROR;
    }

    zone->region_len = len;

    rc = rt_limiter_init_in(zone->region, len, &zone->limits, &zone->lim);
    if (rc != RT_STATUS_OK) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "ratethrottle_zone \"%V\": init failed: %s",
                      &shm_zone->shm.name, rt_status_str(rc));
        return NGX_ERROR;
    }

    shpool->data = zone->region;

    len = sizeof(" in ratethrottle zone \"\"") + shm_zone->shm.name.len;

    shpool->log_ctx = ngx_slab_alloc(shpool, len);
    if (shpool->log_ctx != NULL) {
        ngx_sprintf(shpool->log_ctx, " in ratethrottle zone \"%V\"%Z",
                    &shm_zone->shm.name);
    }

    return NGX_OK;
}


static char *
ngx_http_ratethrottle(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_ratethrottle_loc_conf_t  *lcf = conf;

    ngx_int_t    code;
    ngx_str_t   *value, s;
    ngx_uint_t   i;

    if (lcf->shm_zone || lcf->off) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        if (cf->args->nelts != 2) {
            return "takes no parameters after \"off\"";
        }

        lcf->off = 1;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value[1].data, "zone=", 5) != 0 || value[1].len == 5) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    s.len = value[1].len - 5;
    s.data = value[1].data + 5;

    lcf->shm_zone = ngx_shared_memory_add(cf, &s, 0,
                                          &ngx_http_ratethrottle_module);
    if (lcf->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "status=", 7) == 0) {
            if (lcf->zone_status) {
                return "has a duplicate status code";
            }

            code = ngx_atoi(value[i].data + 7, value[i].len - 7);
            if (code < 400 || code > 599) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "status code must be between 400 and 599 "
                                   "in \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            lcf->zone_status = (ngx_uint_t) code;
            continue;
        }

        if (ngx_strcmp(value[i].data, "dry_run") == 0) {
            if (lcf->zone_dry_run) {
                return "has a duplicate dry run setting";
            }

            lcf->zone_dry_run = 1;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_ratethrottle_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_ratethrottle_loc_conf_t  *lcf = conf;

    ngx_str_t                 *value, s;
    ngx_shm_zone_t            *shm_zone;
    ngx_http_core_loc_conf_t  *clcf;

    value = cf->args->elts;

    if (ngx_strncmp(value[1].data, "zone=", 5) != 0 || value[1].len == 5) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    s.len = value[1].len - 5;
    s.data = value[1].data + 5;

    shm_zone = ngx_shared_memory_add(cf, &s, 0,
                                     &ngx_http_ratethrottle_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (lcf->status_zone) {
        return "is duplicate";
    }

    /* the status location reads the zone; it is not limited by it */
    lcf->status_zone = shm_zone;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_ratethrottle_status_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_ratethrottle_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PREACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_ratethrottle_handler;

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_ratethrottle_header_filter;

    return NGX_OK;
}


/*
 * Connections of dead processes are freed when a worker starts (the master
 * respawns a crashed worker) and every NGX_HTTP_RATETHROTTLE_REAP_MS in the
 * first worker, for processes that are not respawned (an old worker of a
 * reload killed while finishing its WebSockets).
 */

static void
ngx_http_ratethrottle_reap(ngx_cycle_t *cycle)
{
    size_t                              n;
    ngx_uint_t                          i;
    ngx_http_ratethrottle_zone_t      **zones;
    ngx_http_ratethrottle_main_conf_t  *rmcf;

    rmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_ratethrottle_module);
    if (rmcf == NULL) {
        return;
    }

    zones = rmcf->zones.elts;

    for (i = 0; i < rmcf->zones.nelts; i++) {
        if (zones[i]->lim == NULL) {
            continue;
        }

        n = rt_reap_dead(zones[i]->lim);

        if (n) {
            ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                          "ratethrottle: reaped %uz connections of dead "
                          "processes in zone \"%V\"", n, &zones[i]->name);
        }
    }
}


static void
ngx_http_ratethrottle_reap_handler(ngx_event_t *ev)
{
    ngx_http_ratethrottle_reap((ngx_cycle_t *) ngx_cycle);

    if (!ngx_exiting && !ngx_terminate && !ngx_quit) {
        ngx_add_timer(ev, NGX_HTTP_RATETHROTTLE_REAP_MS);
    }
}


static ngx_int_t
ngx_http_ratethrottle_init_process(ngx_cycle_t *cycle)
{
    ngx_http_ratethrottle_main_conf_t  *rmcf;

    rmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_ratethrottle_module);
    if (rmcf == NULL || rmcf->zones.nelts == 0) {
        return NGX_OK;
    }

    ngx_http_ratethrottle_reap(cycle);

    if (ngx_process == NGX_PROCESS_WORKER && ngx_worker == 0) {
        ngx_http_ratethrottle_reap_event.handler =
                                            ngx_http_ratethrottle_reap_handler;
        ngx_http_ratethrottle_reap_event.log = cycle->log;
        ngx_http_ratethrottle_reap_event.data = rmcf;
        ngx_http_ratethrottle_reap_event.cancelable = 1;

        ngx_add_timer(&ngx_http_ratethrottle_reap_event,
                      NGX_HTTP_RATETHROTTLE_REAP_MS);
    }

    return NGX_OK;
}
