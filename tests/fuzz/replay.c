/*
 * replay.c: main() for a fuzz target outside libFuzzer (mbedTLS onefile.c,
 * sqlite fuzzcheck.c). Every argument is a file or a directory; each regular
 * file (directories are read one level deep) is read into a buffer of exactly
 * its size, so ASan reports any read past the end, and passed to
 * LLVMFuzzerTestOneInput. A crash or abort() fails the CTest run; so does an
 * argument that cannot be read or a corpus with no files, so a mistyped path
 * cannot pass silently.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Inputs above this are skipped with a message: the corpus holds small files. */
#define REPLAY_MAX_FILE (64u << 20)

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size < 0 || (uint64_t)st.st_size > REPLAY_MAX_FILE) {
        fprintf(stderr, "replay: cannot size %s or it is too big\n", path);
        fclose(f);
        return -1;
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf || fread(buf, 1, n, f) != n) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        free(buf);
        fclose(f);
        return -1;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    size_t files = 0;
    int bad = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
        return 2;
    }
    for (int a = 1; a < argc; a++) {
        struct stat st;
        if (stat(argv[a], &st) != 0) {
            fprintf(stderr, "replay: cannot stat %s\n", argv[a]);
            bad = 1;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            if (run_file(argv[a]) != 0) bad = 1;
            else files++;
            continue;
        }
        DIR *d = opendir(argv[a]);
        if (!d) {
            fprintf(stderr, "replay: cannot open directory %s\n", argv[a]);
            bad = 1;
            continue;
        }
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            size_t len = strlen(argv[a]) + strlen(e->d_name) + 2;
            char *path = malloc(len);
            if (!path) {
                bad = 1;
                break;
            }
            snprintf(path, len, "%s/%s", argv[a], e->d_name);
            struct stat fst;
            if (stat(path, &fst) == 0 && S_ISREG(fst.st_mode)) {
                if (run_file(path) != 0) bad = 1;
                else files++;
            }
            free(path);
        }
        closedir(d);
    }
    printf("replay: %zu inputs\n", files);
    if (files == 0) {
        fprintf(stderr, "replay: no inputs found\n");
        return 1;
    }
    return bad;
}
