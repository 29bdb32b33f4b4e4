/*
 * correlation_tag: gives each message a correlation ID at MAIL FROM
 * ("<session id>/<client address>"), stored as metadata "correlation_id".
 * The metadata is queued with the message, so event listeners see it again
 * when the message is delivered (see delivery_log.c).
 * Config: (type: "SharedLibrary", name: "libcorrelation_tag.so")
 */
#include <stdio.h>

#include <empath.h>

static int validate_mail_from(Context *ctx) {
    String id = em_context_get_id(ctx);
    String client = em_context_get_client_address(ctx);
    char correlation[512];
    snprintf(correlation, sizeof correlation, "%s/%s", id.data, client.data);
    em_context_set_metadata(ctx, "correlation_id", correlation);
    em_free_string(id);
    em_free_string(client);
    return 0;
}

static int init(StringVector arguments) {
    (void)arguments;
    return 0;
}

EM_DECLARE_MODULE(Validation, .validation_listener = {
                                  "correlation_tag",
                                  init,
                                  {.validate_mail_from = validate_mail_from},
                              });
