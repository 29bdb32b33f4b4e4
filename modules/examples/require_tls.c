/*
 * require_tls: refuses MAIL until the client has started TLS, and records
 * the TLS protocol and cipher of each session, at STARTTLS, in a log file
 * ("<session id> <protocol> <cipher>" per line) and in the metadata of
 * its messages ("tls_protocol", "tls_cipher").
 * Config: (type: "SharedLibrary", name: "librequire_tls.so",
 *          arguments: ["/var/log/empath/tls.log"])
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <empath.h>

static char log_path[4096];

static int init(StringVector arguments) {
    if (arguments.len < 1 || arguments.data[0].len >= sizeof log_path)
        return 1;
    memcpy(log_path, arguments.data[0].data, arguments.data[0].len + 1);
    return 0;
}

static int validate_starttls(Context *ctx) {
    if (!em_context_is_tls(ctx))
        return 1; /* cannot happen: called after the handshake */
    String id = em_context_get_id(ctx);
    String protocol = em_context_tls_protocol(ctx);
    String cipher = em_context_tls_cipher(ctx);
    em_context_set_metadata(ctx, "tls_protocol", protocol.data);
    em_context_set_metadata(ctx, "tls_cipher", cipher.data);
    char line[512];
    int n = snprintf(line, sizeof line, "%s %s %s\n", id.data, protocol.data, cipher.data);
    int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd >= 0) {
        /* One write per line: several sessions may log at once. */
        ssize_t written = write(fd, line, n > 0 ? (size_t)n : 0);
        (void)written;
        close(fd);
    }
    em_free_string(id);
    em_free_string(protocol);
    em_free_string(cipher);
    return 0;
}

static int validate_mail_from(Context *ctx) {
    if (em_context_is_tls(ctx))
        return 0;
    em_context_set_response(ctx, 530, "5.7.0 Must issue a STARTTLS command first");
    return 1;
}

EM_DECLARE_MODULE(Validation, .validation_listener = {
                                  "require_tls",
                                  init,
                                  {
                                      .validate_mail_from = validate_mail_from,
                                      .validate_starttls = validate_starttls,
                                  },
                              });
