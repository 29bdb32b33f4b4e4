/*
 * reject_domain: refuses mail from one sender domain, with its own reply.
 * Config: (type: "SharedLibrary", name: "/usr/local/lib/empath/libreject_domain.so",
 *          arguments: ["spam.example"])
 * Build:  gcc -shared -fPIC reject_domain.c -o libreject_domain.so -lempath
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <empath.h>

static char refused[256];

static int init(StringVector arguments) {
    /* The domain to refuse is required. */
    if (arguments.len < 1 || arguments.data[0].len == 0 || arguments.data[0].len >= sizeof refused)
        return 1;
    memcpy(refused, arguments.data[0].data, arguments.data[0].len + 1);
    return 0;
}

static int validate_mail_from(Context *ctx) {
    String sender = em_context_get_sender(ctx);
    const char *at = sender.data ? strrchr(sender.data, '@') : NULL;
    int reject = at != NULL && strcasecmp(at + 1, refused) == 0;
    if (reject) {
        char reply[320];
        snprintf(reply, sizeof reply, "5.7.1 Mail from %s is not accepted here", refused);
        em_context_set_response(ctx, 550, reply);
    }
    em_free_string(sender);
    return reject;
}

EM_DECLARE_MODULE(Validation, .validation_listener = {
                                  "reject_domain",
                                  init,
                                  {.validate_mail_from = validate_mail_from},
                              });
