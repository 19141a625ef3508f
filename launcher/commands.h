// Subcommands of the origami command line. Each takes argv starting at its own name.
#pragma once

namespace origami::cli {

int doctor(int argc, char** argv);
int train(int argc, char** argv);
int generate(int argc, char** argv);
int serve(int argc, char** argv);
int launch(int argc, char** argv);
int perplexity(int argc, char** argv);
int quantize(int argc, char** argv);

}  // namespace origami::cli
