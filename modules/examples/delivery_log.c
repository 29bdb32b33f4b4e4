/*
 * delivery_log: an event listener that appends one line per event to a log
 * file: the event's name and what the context says about it, with the
 * message's "correlation_id" metadata (set by correlation_tag.c when the
 * message was received) on the delivery events.
 * Config: (type: "SharedLibrary", name: "libdelivery_log.so",
 *          arguments: ["/var/log/empath/deliveries.log"])
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <empath.h>

static char log_path[4096];

static const char *const names[] = {
    "ConnectionOpened", "ConnectionClosed", "DeliveryAttempt",     "DeliverySuccess",
    "DeliveryFailure",  "SmtpError",        "SmtpMessageReceived", "DnsLookup",
};

/* Appends "key=value" to line (at *used), with the value from `value`,
 * which is freed. */
static void field(char *line, size_t size, size_t *used, const char *key, String value) {
    if (*used < size) {
        int n = snprintf(line + *used, size - *used, " %s=%s", key, value.data ? value.data : "");
        if (n > 0)
            *used += (size_t)n;
    }
    em_free_string(value);
}

static int emit(Ev event, Context *ctx) {
    char line[8192];
    size_t used = 0;
    int n = snprintf(line, sizeof line, "%s", (unsigned)event < 8 ? names[event] : "Unknown");
    used = n > 0 ? (size_t)n : 0;
    switch (event) {
    case DeliveryAttempt:
    case DeliverySuccess:
    case DeliveryFailure: {
        if (em_context_has_delivery(ctx)) {
            field(line, sizeof line, &used, "message", em_delivery_get_message_id(ctx));
            field(line, sizeof line, &used, "domain", em_delivery_get_domain(ctx));
            field(line, sizeof line, &used, "server", em_delivery_get_server(ctx));
            if (used < sizeof line) {
                n = snprintf(line + used, sizeof line - used, " attempts=%u",
                             em_delivery_get_attempts(ctx));
                used += n > 0 ? (size_t)n : 0;
            }
            if (event == DeliveryFailure)
                field(line, sizeof line, &used, "error", em_delivery_get_error(ctx));
        }
        field(line, sizeof line, &used, "correlation", em_context_get_metadata(ctx, "correlation_id"));
        StringVector recipients = em_context_get_recipients(ctx);
        for (uintptr_t i = 0; i < recipients.len; i++) {
            if (used < sizeof line) {
                n = snprintf(line + used, sizeof line - used, " rcpt=%s", recipients.data[i].data);
                used += n > 0 ? (size_t)n : 0;
            }
        }
        em_free_string_vector(recipients);
        break;
    }
    case SmtpError:
        field(line, sizeof line, &used, "code", em_context_get(ctx, "smtp_error_code"));
        field(line, sizeof line, &used, "reply", em_context_get(ctx, "smtp_error"));
        break;
    case SmtpMessageReceived:
        field(line, sizeof line, &used, "queue_id", em_context_get(ctx, "queue_id"));
        field(line, sizeof line, &used, "size", em_context_get(ctx, "message_size"));
        field(line, sizeof line, &used, "sender", em_context_get_sender(ctx));
        field(line, sizeof line, &used, "correlation", em_context_get_metadata(ctx, "correlation_id"));
        break;
    case DnsLookup:
        field(line, sizeof line, &used, "domain", em_context_get(ctx, "dns_domain"));
        field(line, sizeof line, &used, "cache", em_context_get(ctx, "dns_cache_status"));
        break;
    default:
        field(line, sizeof line, &used, "client", em_context_get_client_address(ctx));
        break;
    }
    if (used >= sizeof line)
        used = sizeof line - 1;
    line[used++] = '\n';
    int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd >= 0) {
        /* One write per line: events may come from several threads. */
        ssize_t written = write(fd, line, used);
        (void)written;
        close(fd);
    }
    return 0;
}

static int init(StringVector arguments) {
    if (arguments.len < 1 || arguments.data[0].len >= sizeof log_path)
        return 1;
    memcpy(log_path, arguments.data[0].data, arguments.data[0].len + 1);
    return 0;
}

EM_DECLARE_MODULE(Event, .event_listener = {"delivery_log", init, emit});
