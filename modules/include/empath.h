/*
 * empath.h - the C API of Empath plugin modules.
 *
 * A module is a shared library that exports `declare_module`, which returns
 * an `em_module` describing its callbacks. Use EM_DECLARE_MODULE:
 *
 *     static int check_sender(em_context *ctx) { ... return 0; }
 *     EM_DECLARE_MODULE(
 *         .name = "example",
 *         .validation = { .on_mail_from = check_sender },
 *     )
 *
 * Validation callbacks (Connect, MailFrom, RcptTo, Data, StartTls) return 0
 * to accept and non-zero to reject; a module that rejects may set the SMTP
 * reply with em_context_set_response(). Event callbacks (ConnectionOpened,
 * ConnectionClosed, DeliverySuccess, DeliveryFailure) return nothing.
 *
 * Strings handed to a module are em_string values it owns (allocated with
 * malloc): free them with em_free_string / em_free_string_vector. Their data is NUL-terminated and
 * contains no other NUL byte (embedded NULs are removed, and `len` is the
 * length after removal). Strings a module passes in are sanitised the same
 * way. Metadata set during reception is stored with the message, so the
 * same module sees it again in the delivery events, possibly days later and
 * in another process.
 *
 * Threads: smtpd serves many sessions at once, so callbacks may run on
 * several threads at the same time, each call with its own context. A
 * module that keeps mutable state of its own must lock it. A callback that
 * crashes takes down the daemon that ran it (smtpd or qmgr); the master
 * restarts it, and the client of that session sees the connection drop.
 *
 * Metadata set by validation callbacks, on_data included, is stored with
 * the message when it is queued.
 *
 * The accessor functions are static inline: they call through the table in
 * the context, so a module needs no symbols from the host executable.
 */
#ifndef EMPATH_H
#define EMPATH_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EM_API_VERSION 1

typedef struct em_string {
    char *data;
    size_t len;
} em_string;

typedef struct em_string_vector {
    em_string *data;
    size_t len;
} em_string_vector;

typedef struct em_context em_context;

/* The host's functions, reached through the context. */
typedef struct em_api {
    em_string (*get_id)(const em_context *ctx);
    em_string (*get_sender)(const em_context *ctx);
    int (*set_sender)(em_context *ctx, const char *sender, size_t len);
    em_string_vector (*get_recipients)(const em_context *ctx);
    int (*add_recipient)(em_context *ctx, const char *recipient, size_t len);
    em_string (*get_data)(const em_context *ctx);
    em_string (*get_metadata)(const em_context *ctx, const char *key, size_t key_len);
    int (*set_metadata)(em_context *ctx, const char *key, size_t key_len, const char *value, size_t value_len);
    em_string (*get_client_address)(const em_context *ctx);
    int (*set_response)(em_context *ctx, int code, const char *text, size_t len);
} em_api;

/* The first member of every context is the table; the rest is private. */
struct em_context {
    const em_api *api;
};

typedef int (*em_validate_fn)(em_context *ctx);
typedef void (*em_event_fn)(em_context *ctx);

typedef struct em_validation_listener {
    em_validate_fn on_connect;
    em_validate_fn on_mail_from;
    em_validate_fn on_rcpt_to;
    em_validate_fn on_data;
    em_validate_fn on_starttls;
} em_validation_listener;

typedef struct em_event_listener {
    em_event_fn on_connection_opened;
    em_event_fn on_connection_closed;
    em_event_fn on_delivery_success;
    em_event_fn on_delivery_failure;
} em_event_listener;

typedef struct em_module {
    uint32_t api_version;
    const char *name;
    /* Called once after loading with the config's `arguments`; non-zero
     * makes the load fail. May be NULL. */
    int (*init)(int argc, const char *const *argv);
    em_validation_listener validation;
    em_event_listener events;
} em_module;

/* Every module exports this. */
em_module declare_module(void);

#define EM_DECLARE_MODULE(...)                                          \
    em_module declare_module(void) {                                    \
        em_module module = {.api_version = EM_API_VERSION, __VA_ARGS__}; \
        return module;                                                  \
    }

static inline size_t em__strlen(const char *s) {
    size_t n = 0;
    if (s)
        while (s[n])
            n++;
    return n;
}

/* Accessors and mutators. */
static inline em_string em_context_get_id(const em_context *ctx) { return ctx->api->get_id(ctx); }
static inline em_string em_context_get_sender(const em_context *ctx) { return ctx->api->get_sender(ctx); }
static inline int em_context_set_sender(em_context *ctx, const char *sender) {
    return ctx->api->set_sender(ctx, sender, em__strlen(sender));
}
static inline em_string_vector em_context_get_recipients(const em_context *ctx) {
    return ctx->api->get_recipients(ctx);
}
static inline int em_context_add_recipient(em_context *ctx, const char *recipient) {
    return ctx->api->add_recipient(ctx, recipient, em__strlen(recipient));
}
/* The message content; empty before the Data event. */
static inline em_string em_context_get_data(const em_context *ctx) { return ctx->api->get_data(ctx); }
/* An empty string (len 0) when the key is not set. */
static inline em_string em_context_get_metadata(const em_context *ctx, const char *key) {
    return ctx->api->get_metadata(ctx, key, em__strlen(key));
}
static inline int em_context_set_metadata(em_context *ctx, const char *key, const char *value) {
    return ctx->api->set_metadata(ctx, key, em__strlen(key), value, em__strlen(value));
}
/* Length-counted variant: the value may contain NUL bytes, which are removed. */
static inline int em_context_set_metadata_n(em_context *ctx, const char *key, size_t key_len, const char *value,
                                            size_t value_len) {
    return ctx->api->set_metadata(ctx, key, key_len, value, value_len);
}
static inline em_string em_context_get_client_address(const em_context *ctx) {
    return ctx->api->get_client_address(ctx);
}
/* The SMTP reply for a rejection, e.g. (550, "5.7.1 Sender domain refused"). */
static inline int em_context_set_response(em_context *ctx, int code, const char *text) {
    return ctx->api->set_response(ctx, code, text, em__strlen(text));
}
/* Strings and vectors are allocated with malloc by the host. */
static inline void em_free_string(em_string s) { free(s.data); }
static inline void em_free_string_vector(em_string_vector v) {
    for (size_t i = 0; i < v.len; i++)
        free(v.data[i].data);
    free(v.data);
}

#ifdef __cplusplus
}
#endif
#endif /* EMPATH_H */
