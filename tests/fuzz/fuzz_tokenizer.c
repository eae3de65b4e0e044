/*
 * fuzz_tokenizer.c: the llama2.c tokenizer loader on arbitrary bytes, with
 * the vocabulary sizes of the seed corpus (259, 265) and of tok512 claimed in
 * turn; a file that parses is then used to encode and decode a fixed text.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plait/tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int vocabs[] = {PLAIT_TOK_MIN_VOCAB, 265, 512};
    for (size_t v = 0; v < sizeof(vocabs) / sizeof(vocabs[0]); v++) {
        plait_tok_t t;
        plait_tok_init(&t);
        if (plait_tok_parse(&t, data, size, vocabs[v]) == 0) {
            static const char text[] = "Once upon a time, \xc3\xa9t\xc3\xa9 \xff zoo.";
            int ids[64];
            size_t n = 0;
            if (plait_tok_encode(&t, text, sizeof(text) - 1, 1, 1, ids, 64, &n) == 0) {
                for (size_t i = 1; i < n; i++) {
                    size_t len = 0;
                    const char *p = plait_tok_decode(&t, ids[i - 1], ids[i], &len);
                    if (p) (void)plait_tok_piece_is_printable(p, len);
                }
            }
        }
        plait_tok_free(&t);
    }
    return 0;
}
