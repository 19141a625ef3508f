// The origami command line.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

#include "launcher/commands.h"
#include "runtime/error.h"

namespace {

void print_help() {
  std::printf(
      "origami %s - train and serve transformer language models across many ranks\n"
      "\n"
      "usage: origami [--help] [--version] COMMAND [ARGS...]\n"
      "\n"
      "commands:\n"
      "  launch      start N ranks of a command on this machine, supervised (see docs/launch.md)\n"
      "  train       train a model from a config file (configs/*.pbtxt)\n"
      "  generate    generate text from a prompt (Hugging Face folder or training checkpoint)\n"
      "  serve       serve a model over an OpenAI-compatible HTTP API (see docs/serving.md)\n"
      "  perplexity  perplexity of a model on a text (dense, int8/int4 or GPTQ weights)\n"
      "  quantize    quantize a model to GPTQ (Hugging Face format; see docs/quantization.md)\n"
      "  doctor      print devices, library versions and a quick compute check\n"
      "\n"
      "options:\n"
      "  -h, --help     show this help and exit\n"
      "  -V, --version  print the version and exit\n"
      "\n"
      "Run 'origami COMMAND --help' for the options of a command.\n",
      ORIGAMI_VERSION);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    print_help();
    return 2;
  }
  const std::string cmd = argv[1];
  // Output goes to pipes under launchers: line by line, so every rank's lines arrive whole and
  // in time.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  // origami launch starts ranks with the stop signals blocked until `train` can handle them;
  // every other command takes them as usual.
  if (cmd != "train") {
    sigset_t set;
    sigemptyset(&set);
    for (int sig : {SIGTERM, SIGUSR1, SIGINT}) sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, nullptr);
  }
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    print_help();
    return 0;
  }
  if (cmd == "-V" || cmd == "--version") {
    std::printf("origami %s\n", ORIGAMI_VERSION);
    return 0;
  }
  try {
    if (cmd == "doctor") return origami::cli::doctor(argc - 1, argv + 1);
    if (cmd == "train") return origami::cli::train(argc - 1, argv + 1);
    if (cmd == "generate") return origami::cli::generate(argc - 1, argv + 1);
    if (cmd == "serve") return origami::cli::serve(argc - 1, argv + 1);
    if (cmd == "launch") return origami::cli::launch(argc - 1, argv + 1);
    if (cmd == "perplexity") return origami::cli::perplexity(argc - 1, argv + 1);
    if (cmd == "quantize") return origami::cli::quantize(argc - 1, argv + 1);
  } catch (const origami::Error& e) {
    std::fprintf(stderr, "origami %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
  std::fprintf(stderr, "origami: unknown command '%s'; run 'origami --help' for the list\n",
               cmd.c_str());
  return 2;
}
