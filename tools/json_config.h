// JSON configuration files for CLI11 (`--config file.json`): every command-line option can be given as a key
// (dashes or underscores), either at the top level (for the subcommand being run) or under the subcommand's name:
//   {"bits": [2.5, 3], "keep_fp": ["^fc"], "quantize": {"probes": 16}}
// The command line wins over the file; unknown keys, sections that name no subcommand and nested values are
// errors (usage, exit 2).
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

namespace bayesq_cli {

class JsonConfig : public CLI::Config {
 public:
  explicit JsonConfig(CLI::App* app) : app_(app) {}

  std::string to_config(const CLI::App*, bool, bool, std::string) const override { return "{}\n"; }

  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override {
    nlohmann::json root;
    try {
      input >> root;
    } catch (const nlohmann::json::exception& e) {
      throw CLI::ConversionError(std::string("configuration file is not valid JSON: ") + e.what());
    }
    if (!root.is_object()) throw CLI::ConversionError("configuration file must hold a JSON object");
    std::vector<CLI::ConfigItem> items;
    const auto active = app_->get_subcommands();
    const std::string subcommand = active.empty() ? "" : active.front()->get_name();
    for (const auto& entry : root.items()) {
      if (entry.value().is_object()) {
        // A section for one subcommand: used only when that subcommand runs. Any other object is a mistake.
        const std::string section = entry.key();
        const bool known = !app_->get_subcommands([&](CLI::App* sub) { return sub->get_name() == section; }).empty();
        if (!known) throw CLI::ConversionError("configuration file: '" + section + "' is not a subcommand section");
        if (section != subcommand) continue;
        for (const auto& inner : entry.value().items()) {
          if (inner.value().is_object())
            throw CLI::ConversionError("configuration file: '" + section + "." + inner.key() + "' must not be an object");
          items.push_back(item(subcommand, inner.key(), inner.value()));
        }
      } else {
        items.push_back(item(subcommand, entry.key(), entry.value()));
      }
    }
    return items;
  }

 private:
  static CLI::ConfigItem item(const std::string& parent, std::string name, const nlohmann::json& value) {
    for (char& c : name)
      if (c == '_') c = '-';
    CLI::ConfigItem out;
    if (!parent.empty()) out.parents = {parent};
    out.name = name;
    auto text = [](const nlohmann::json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); };
    if (value.is_array()) {
      for (const auto& v : value) {
        // A list holds plain values: a nested list or object would reach the option as text like "[4]".
        if (v.is_array() || v.is_object() || v.is_null())
          throw CLI::ConversionError("configuration file: '" + name + "' must be a list of plain values");
        out.inputs.push_back(text(v));
      }
    } else if (value.is_null()) {
      throw CLI::ConversionError("configuration file: '" + name + "' is null");
    } else {
      out.inputs.push_back(text(value));
    }
    return out;
  }

  CLI::App* app_;
};

}  // namespace bayesq_cli
