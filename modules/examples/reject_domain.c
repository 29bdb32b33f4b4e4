/*
 * reject_domain: refuses mail from one sender domain.
 * Config: (type: "SharedLibrary", name: "libreject_domain.so", arguments: ["spam.example"])
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "empath.h"

static char refused[256];

static int init(int argc, const char *const *argv) {
    if (argc < 1 || strlen(argv[0]) == 0 || strlen(argv[0]) >= sizeof refused)
        return 1; /* the domain to refuse is required */
    strcpy(refused, argv[0]);
    return 0;
}

static int check_sender(em_context *ctx) {
    em_string sender = em_context_get_sender(ctx);
    const char *at = sender.data ? strrchr(sender.data, '@') : NULL;
    int reject = at != NULL && strcasecmp(at + 1, refused) == 0;
    if (reject) {
        char text[320];
        snprintf(text, sizeof text, "5.7.1 Mail from %s is not accepted here", refused);
        em_context_set_response(ctx, 550, text);
    }
    em_free_string(sender);
    return reject;
}

EM_DECLARE_MODULE(
    .name = "reject_domain",
    .init = init,
    .validation = {.on_mail_from = check_sender},
)
