/*
 * list_message: at DATA, writes the recipients and the message, as smtpd
 * received it, to a file named after the session:
 *   <directory>/<session id>.txt = "recipients N\n" one per line,
 *                                  "data LEN\n" and the LEN bytes.
 * Config: (type: "SharedLibrary", name: "liblist_message.so",
 *          arguments: ["/var/spool/empath-copies"])
 */
#include <stdio.h>
#include <string.h>

#include <empath.h>

static char directory[2048];

static int init(StringVector arguments) {
    if (arguments.len < 1 || arguments.data[0].len >= sizeof directory)
        return 1;
    memcpy(directory, arguments.data[0].data, arguments.data[0].len + 1);
    return 0;
}

static int validate_data(Context *ctx) {
    String id = em_context_get_id(ctx);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.txt", directory, id.data);
    em_free_string(id);
    FILE *out = fopen(path, "wb");
    if (!out) {
        em_context_set_response(ctx, 451, "4.3.0 Cannot keep a copy of the message");
        return 1;
    }
    StringVector recipients = em_context_get_recipients(ctx);
    fprintf(out, "recipients %zu\n", (size_t)recipients.len);
    for (uintptr_t i = 0; i < recipients.len; i++)
        fprintf(out, "%s\n", recipients.data[i].data);
    em_free_string_vector(recipients);
    String data = em_context_get_data(ctx);
    fprintf(out, "data %zu\n", (size_t)data.len);
    fwrite(data.data, 1, data.len, out);
    em_free_string(data);
    fclose(out);
    return 0;
}

EM_DECLARE_MODULE(Validation, .validation_listener = {
                                  "list_message",
                                  init,
                                  {.validate_data = validate_data},
                              });
