/*
 * delivery_audit: tags each message with a correlation ID when it is
 * received, and appends "<queue id> <correlation id> <event>" to a log file
 * when it is delivered or fails, with "checked" when on_data saw the whole
 * message. The tags travel with the message in the queue, so the delivery
 * side sees what the reception side set.
 * Config: (type: "SharedLibrary", name: "libdelivery_audit.so", arguments: ["/var/log/empath-audit.log"])
 */
#include <stdio.h>
#include <string.h>

#include "empath.h"

static char log_path[4096];

static int init(int argc, const char *const *argv) {
    if (argc < 1 || strlen(argv[0]) >= sizeof log_path)
        return 1;
    strcpy(log_path, argv[0]);
    return 0;
}

static int tag(em_context *ctx) {
    em_string session = em_context_get_id(ctx);
    em_string client = em_context_get_client_address(ctx);
    char value[512];
    snprintf(value, sizeof value, "cid-%s-%s", session.data ? session.data : "", client.data ? client.data : "");
    em_context_set_metadata(ctx, "correlation_id", value);
    em_free_string(session);
    em_free_string(client);
    return 0;
}

static int check(em_context *ctx) {
    em_context_set_metadata(ctx, "data_checked", "checked");
    return 0;
}

static void record(em_context *ctx, const char *event) {
    em_string id = em_context_get_id(ctx);
    em_string cid = em_context_get_metadata(ctx, "correlation_id");
    em_string checked = em_context_get_metadata(ctx, "data_checked");
    em_string_vector recipients = em_context_get_recipients(ctx);
    FILE *log = fopen(log_path, "a");
    if (log) {
        fprintf(log, "%s %s %s %zu %s\n", id.data, cid.len ? cid.data : "-", event, recipients.len,
                checked.len ? checked.data : "-");
        fclose(log);
    }
    em_free_string(id);
    em_free_string(cid);
    em_free_string(checked);
    em_free_string_vector(recipients);
}

static void delivered(em_context *ctx) { record(ctx, "delivered"); }
static void failed(em_context *ctx) { record(ctx, "failed"); }

EM_DECLARE_MODULE(
    .name = "delivery_audit",
    .init = init,
    .validation = {.on_mail_from = tag, .on_data = check},
    .events = {.on_delivery_success = delivered, .on_delivery_failure = failed},
)
