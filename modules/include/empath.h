/*
 * empath.h - the C API of Empath plugin modules (API version 2).
 *
 * This is the module contract of the original Empath: a module is a shared
 * library that exports `declare_module`, which returns a `Mod`, declared
 * with EM_DECLARE_MODULE. A `Mod` is either a validation listener, whose
 * validators smtpd calls during SMTP sessions, or an event listener, whose
 * `emit` is told what happens to connections and messages:
 *
 *     #include <empath.h>
 *
 *     static int check_sender(Context *ctx) {
 *         String sender = em_context_get_sender(ctx);
 *         int refuse = ...;
 *         if (refuse)
 *             em_context_set_response(ctx, 550, "5.7.1 Not from here");
 *         em_free_string(sender);
 *         return refuse;
 *     }
 *     static int init(StringVector arguments) { return 0; }
 *
 *     EM_DECLARE_MODULE(Validation, .validation_listener = {
 *         "example", init, {.validate_mail_from = check_sender}});
 *
 * Build it against this header and link it with -lempath:
 *
 *     gcc -shared -fPIC example.c -o libexample.so -lempath
 *
 * The em_* functions live in libempath.so. They reach the daemon that
 * called the module through the Context, so one module works in every
 * daemon: smtpd (validation, connection and SMTP events), qmgr (delivery
 * events) and smtp-out (DNS events).
 *
 * Validators return 0 to accept and non-zero to reject. Modules are asked
 * in config order; the first that rejects wins, and the reply it set with
 * em_context_set_response is the SMTP reply (else "550 5.7.1 Rejected by
 * policy module NAME").
 *
 * Strings: every String and StringVector a function returns belongs to the
 * module; free it with em_free_string / em_free_string_vector. `data` is
 * never NULL (except when memory ran out; then `len` is 0), is
 * NUL-terminated, and holds no other NUL byte: embedded NULs are removed,
 * and `len` is the length after removal. The arguments given to `init`
 * stay valid for the life of the process; do not free them.
 *
 * Metadata (em_context_set_metadata / em_context_set) set during reception
 * is stored with the message in the queue file, so the modules see it again
 * in the delivery events, hours or days later and in another process.
 *
 * Threads: callbacks may run on several threads at once, each call with
 * its own Context. A module that keeps mutable state must lock it. A
 * callback that crashes takes down the daemon that ran it; the master
 * restarts it.
 */
#ifndef EMPATH_H
#define EMPATH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The module API this header describes. EM_DECLARE_MODULE records it in
 * the module (em_module_api_version); a daemon refuses, at start-up, a
 * module built for another version. */
#define EM_API_VERSION 2

/* A string handed to a module. */
typedef struct String {
    uintptr_t len;
    const char *data;
} String;

typedef struct StringVector {
    uintptr_t len;
    const String *data;
} StringVector;

/* The session or message a callback is about. Opaque: use the em_*
 * functions. */
typedef struct Context Context;

/* Events for event listeners. */
typedef enum Ev {
    /* smtpd: a client connected (before the greeting). */
    ConnectionOpened,
    /* smtpd: the connection is over. */
    ConnectionClosed,
    /* qmgr: a delivery to em_delivery_get_domain() is about to start. */
    DeliveryAttempt,
    /* qmgr: the recipients in em_context_get_recipients() were delivered
     * (em_delivery_get_server() took them). */
    DeliverySuccess,
    /* qmgr: delivery to those recipients failed, for now (a 4xx error,
     * the message stays queued) or for good (5xx, or the message expired);
     * em_delivery_get_error() has the reply. */
    DeliveryFailure,
    /* smtpd: a 4xx or 5xx reply was sent; metadata "smtp_error_code"
     * ("550") and "smtp_error" (the whole reply line) describe it. */
    SmtpError,
    /* smtpd: a message was queued and its queue file is on disk; metadata
     * "queue_id" and "message_size" describe it. */
    SmtpMessageReceived,
    /* smtp-out: the mail servers of a domain were looked up; metadata
     * "dns_cache_status" ("hit" or "miss"), "dns_domain", "dns_cache_size",
     * and for a miss "dns_lookup_duration_ms" (and "dns_error" when the
     * lookup failed). */
    DnsLookup,
} Ev;

/* Called once, when a daemon loads the module, with the config's
 * `arguments`; non-zero makes the load fail (the daemon exits and says so). */
typedef int32_t (*Init)(StringVector arguments);

typedef struct Validators {
    /* smtpd: a client connected; a rejection replaces the greeting and the
     * connection closes. */
    int32_t (*validate_connect)(Context *ctx);
    /* smtpd: EHLO or HELO (em_context_get_helo has the name). */
    int32_t (*validate_ehlo)(Context *ctx);
    /* smtpd: MAIL passed smtpd's own checks. */
    int32_t (*validate_mail_from)(Context *ctx);
    /* smtpd: RCPT passed smtpd's own checks; the new recipient is the last
     * of em_context_get_recipients. */
    int32_t (*validate_rcpt_to)(Context *ctx);
    /* smtpd: the whole message arrived (em_context_get_data has it), before
     * it is queued; a rejection queues nothing. */
    int32_t (*validate_data)(Context *ctx);
    /* smtpd: the TLS handshake succeeded; a rejection closes the
     * connection. */
    int32_t (*validate_starttls)(Context *ctx);
} Validators;

typedef struct Validation {
    const char *module_name;
    Init init;
    Validators validators;
} Validation;

typedef enum Mod_Tag {
    ValidationListener,
    EventListener,
} Mod_Tag;

typedef struct EventListener_Body {
    const char *module_name;
    Init init;
    /* The return value is ignored: events cannot reject anything. */
    int32_t (*emit)(Ev event, Context *ctx);
} EventListener_Body;

/* What declare_module returns. */
typedef struct Mod {
    Mod_Tag tag;
    union {
        struct {
            Validation validation_listener;
        };
        EventListener_Body event_listener;
    };
} Mod;

/* Every module exports these two; EM_DECLARE_MODULE defines both. */
Mod declare_module(void);
extern const uint32_t em_module_api_version;

/* EM_DECLARE_MODULE(Validation, .validation_listener = {NAME, INIT, {VALIDATORS}})
 * EM_DECLARE_MODULE(Event, .event_listener = {NAME, INIT, EMIT}) */
#define EM_DECLARE_MODULE(kind, ...)                            \
    const uint32_t em_module_api_version = EM_API_VERSION;      \
    Mod declare_module(void) { return (Mod){kind##Listener, {__VA_ARGS__}}; }

/* The context's identity: the session ID in smtpd, the queue ID in the
 * delivery events. */
String em_context_get_id(const Context *ctx);
/* The sender (reverse path) without angle brackets; empty for <>. */
String em_context_get_sender(const Context *ctx);
/* Replaces the sender of the transaction; NULL sets the null sender <>.
 * False (and no change) for something that is not an address. */
bool em_context_set_sender(Context *ctx, const char *sender);
/* The recipients accepted so far (in delivery events: the recipients the
 * event is about). */
StringVector em_context_get_recipients(const Context *ctx);
/* The message as the client sent it (at validate_data); empty elsewhere. */
String em_context_get_data(const Context *ctx);
/* The reply if this validator rejects, e.g. (550, "5.7.1 Not from here").
 * The text should begin with an enhanced status code; one line. NULL
 * forgets a reply set before. False for a status outside 200-599. */
bool em_context_set_response(Context *ctx, uint32_t status, const char *response);

/* STARTTLS: true once the session runs over TLS; then the protocol
 * ("TLSv1.3") and the cipher suite ("TLS_AES_256_GCM_SHA384"). */
bool em_context_is_tls(const Context *ctx);
String em_context_tls_protocol(const Context *ctx);
String em_context_tls_cipher(const Context *ctx);

/* Metadata: key-value strings that travel with the message. */
bool em_context_exists(const Context *ctx, const char *key);
/* The value, or an empty string when the key is not set. */
String em_context_get(const Context *ctx, const char *key);
/* False for a NULL or empty key or a NULL value. */
bool em_context_set(Context *ctx, const char *key, const char *value);
/* The same as em_context_get and em_context_set. */
String em_context_get_metadata(const Context *ctx, const char *key);
bool em_context_set_metadata(Context *ctx, const char *key, const char *value);

/* Delivery events (DeliveryAttempt, DeliverySuccess, DeliveryFailure):
 * em_context_has_delivery is true and these describe the delivery. */
bool em_context_has_delivery(const Context *ctx);
String em_delivery_get_message_id(const Context *ctx);
String em_delivery_get_domain(const Context *ctx);
/* The server that answered ("mx.example.com [192.0.2.1]:25"), or empty. */
String em_delivery_get_server(const Context *ctx);
/* The reply that made delivery fail ("550 5.1.1 No such user"), or empty. */
String em_delivery_get_error(const Context *ctx);
/* Delivery attempts of the message, the current one included. */
uint32_t em_delivery_get_attempts(const Context *ctx);

void em_free_string(String string);
void em_free_string_vector(StringVector vector);

/* Empath's additions to the original API. */
/* The client's IP address (smtpd, and the delivery events). */
String em_context_get_client_address(const Context *ctx);
/* The name the client gave with EHLO or HELO; empty before. */
String em_context_get_helo(const Context *ctx);
/* Adds a recipient to the transaction (at validate_rcpt_to or
 * validate_data); false for something that is not an address. */
bool em_context_add_recipient(Context *ctx, const char *recipient);

#ifdef __cplusplus
}
#endif
#endif /* EMPATH_H */
