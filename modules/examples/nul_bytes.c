/*
 * nul_bytes: tries to put NUL bytes into Empath through every string it
 * passes in, to show that they are removed. Stores "a\0b\0c" as metadata
 * "nul_test", and rejects with a reply text holding a NUL when the sender
 * is nul@test.example.
 */
#include <string.h>

#include "empath.h"

static int mail_from(em_context *ctx) {
    static const char value[] = {'a', '\0', 'b', '\0', 'c'};
    em_context_set_metadata_n(ctx, "nul_test", 8, value, sizeof value);
    em_string sender = em_context_get_sender(ctx);
    int reject = sender.data && strcmp(sender.data, "nul@test.example") == 0;
    em_free_string(sender);
    if (reject) {
        static const char text[] = "5.7.1 before\0after";
        ctx->api->set_response(ctx, 554, text, sizeof text - 1);
    }
    return reject;
}

EM_DECLARE_MODULE(
    .name = "nul_bytes",
    .validation = {.on_mail_from = mail_from},
)
