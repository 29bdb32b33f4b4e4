/*
 * crash_on_rcpt: a deliberately broken module, for testing what a crash
 * does. It calls abort() when the recipient just given with RCPT TO is
 * crash@sink.test; that takes down the smtpd process serving the session,
 * and the master starts a new one. Every other recipient is accepted.
 * Config: (type: "SharedLibrary", name: "libcrash_on_rcpt.so")
 */
#include <stdlib.h>
#include <string.h>

#include <empath.h>

static int validate_rcpt_to(Context *ctx) {
    StringVector recipients = em_context_get_recipients(ctx);
    /* The recipient being checked is the last one. */
    int crash = recipients.len > 0 && strcmp(recipients.data[recipients.len - 1].data, "crash@sink.test") == 0;
    em_free_string_vector(recipients);
    if (crash)
        abort();
    return 0;
}

static int init(StringVector arguments) {
    (void)arguments;
    return 0;
}

EM_DECLARE_MODULE(Validation, .validation_listener = {"crash_on_rcpt", init, {.validate_rcpt_to = validate_rcpt_to}});
