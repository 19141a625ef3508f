// Config files: Protobuf text format (configs/schema/origami.proto). Loading reports syntax
// errors, unknown fields and out-of-range values with the file, line and field name, applies
// command-line overrides ("train.lr=3e-4"), and fills in the documented defaults.
#pragma once

#include <string>
#include <vector>

#include "configs/schema/origami.pb.h"

namespace origami {

using Config = config::Config;

// Reads `path`, applies `overrides` (each "dotted.field.path=value", value in text-format syntax:
// numbers, true/false, strings with or without quotes; repeated fields take "[1, 2]"), fills
// defaults and validates. Throws origami::Error ("configs/x.pbtxt:12:3: model.num_heads: ...").
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// The same from text; `name` is used in messages in place of a file name.
Config parse_config(const std::string& text, const std::string& name,
                    const std::vector<std::string>& overrides = {});

// Writes a config back as text format (all fields, defaults filled in).
std::string config_to_text(const Config& c);

}  // namespace origami
