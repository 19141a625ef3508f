#include "runtime/serve/http_server.h"

#include <cctype>
#include <condition_variable>
#include <deque>
#include <map>
#include <optional>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "runtime/serve/protocol.h"

namespace origami::serve {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using detail::concat;

namespace {

constexpr const char* kServerName = "origami";
// Bytes a client may send ahead (a pipelined request) while its previous request is answered;
// past this we stop reading until the answer is out.
constexpr size_t kReadAheadLimit = size_t(64) << 10;
constexpr size_t kReadChunk = 4096;
// How long a closing connection keeps reading (and dropping) what the client still sends, so
// that closing does not reset the connection before the client has read our last response.
constexpr std::chrono::milliseconds kLingerTime{1000};

// Beast (1.74) speaks boost::string_view.
std::string text(beast::string_view v) {
  return std::string(v.data(), v.size());
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  return true;
}

// True when `given` equals `key`; the time taken depends on the length of `given` only, never
// on where the two differ.
bool key_matches(std::string_view given, std::string_view key) {
  unsigned diff = given.size() != key.size() ? 1u : 0u;
  for (size_t i = 0; i < given.size(); ++i)
    diff |= static_cast<unsigned char>(given[i] ^ key[i % key.size()]);
  return diff == 0 && !key.empty();
}

// The token of "Authorization: Bearer TOKEN" (scheme in any case), or nullopt.
std::optional<std::string_view> bearer_token(std::string_view authorization) {
  constexpr std::string_view scheme = "bearer ";
  if (authorization.size() < scheme.size() ||
      !iequals(authorization.substr(0, scheme.size()), scheme))
    return std::nullopt;
  std::string_view token = authorization.substr(scheme.size());
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  while (!token.empty() && token.back() == ' ') token.remove_suffix(1);
  return token;
}

}  // namespace

// ---- server state -----------------------------------------------------------------------------

struct HttpServer::State {
  struct Route {
    Handler handler;
    Auth auth = Auth::required;
  };

  explicit State(HttpServerOptions o) : options(std::move(o)) {}

  HttpServerOptions options;
  std::map<std::string, std::map<std::string, Route>> routes;  // path → method → route

  std::mutex mutex;  // guards what follows, up to `threads`
  std::condition_variable changed;
  size_t open = 0;  // connections not yet closed
  std::vector<std::weak_ptr<HttpConnection>> connections;
  bool started = false, stopping = false, stopped = false;
  uint16_t port = 0;

  std::vector<std::thread> threads;
  // Declared last, destroyed first: destroying the io_context destroys the handlers that own
  // connections, and those still use the members above.
  net::io_context ioc;
  tcp::acceptor acceptor{net::make_strand(ioc)};
  net::steady_timer accept_retry{acceptor.get_executor()};
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;

  void accept();
  void connection_closed() {
    std::lock_guard lock(mutex);
    --open;
    changed.notify_all();
  }
};

// ---- one connection ---------------------------------------------------------------------------

// Reads requests one after the other, hands each to its handler, writes the answer, and watches
// the socket while the answer is pending so that a client that leaves is noticed at once. All of
// its methods run on its strand.
class HttpConnection : public std::enable_shared_from_this<HttpConnection> {
 public:
  HttpConnection(tcp::socket socket, HttpServer::State& server)
      : server_(server), stream_(std::move(socket)), linger_timer_(stream_.get_executor()) {}
  ~HttpConnection() {
    if (phase_ != Phase::closed) server_.connection_closed();
  }

  auto executor() { return stream_.get_executor(); }

  void start() {
    net::post(executor(), [self = shared_from_this()] { self->read_request(); });
  }

  // The server is stopping: an idle connection closes now, a busy one after its answer.
  void drain() {
    draining_ = true;
    if (phase_ == Phase::reading) close_now();
  }
  void force_close() { close_now(); }

  // ---- from ResponseStream (posted onto the strand) ----
  void respond(uint64_t exchange, HttpResponse r) {
    if (!current(exchange) || answer_ != Answer::none) return;
    answer_ = Answer::complete;
    auto res = std::make_shared<http::response<http::string_body>>();
    res->result(unsigned(r.status));
    set_headers(*res, r.content_type, r.headers);
    res->body() = std::move(r.body);
    res->prepare_payload();
    stream_.expires_after(server_.options.write_timeout);
    http::async_write(stream_, *res,
                      [self = shared_from_this(), res](beast::error_code ec, size_t) {
                        if (ec) return self->close_now();
                        self->end_exchange();
                      });
  }

  void begin_stream(uint64_t exchange, int status, const std::string& content_type,
                    const std::vector<std::pair<std::string, std::string>>& headers) {
    if (!current(exchange) || answer_ != Answer::none) return;
    answer_ = Answer::stream;
    // HTTP/1.0 knows no chunks: its stream is the raw bytes, ended by closing the connection.
    chunked_ = version_ >= 11;
    if (!chunked_) keep_alive_ = false;
    stream_header_.result(unsigned(status));
    set_headers(stream_header_, content_type, headers);
    if (content_type == "text/event-stream")
      stream_header_.set(http::field::cache_control, "no-cache");
    stream_header_.chunked(chunked_);
    header_writer_.emplace(stream_header_);
    writing_ = true;
    stream_.expires_after(server_.options.write_timeout);
    http::async_write_header(
        stream_, *header_writer_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->on_stream_written(ec); });
  }

  void write(uint64_t exchange, std::string bytes) {
    if (!current(exchange) || answer_ != Answer::stream || bytes.empty()) return;
    backlog_bytes_ += bytes.size();
    backlog_.push_back(std::move(bytes));
    if (backlog_bytes_ > server_.options.stream_backlog_limit) return close_now();  // too slow
    pump();
  }

  void finish(uint64_t exchange) {
    if (!current(exchange) || answer_ != Answer::stream) return;
    finish_requested_ = true;
    pump();
  }

  // The handler dropped its stream: no answer yet → 500; a stream cut short → close.
  void abandoned(uint64_t exchange) {
    if (!current(exchange)) return;
    if (answer_ == Answer::none)
      return respond(exchange, error_response(500, "the server gave no answer to this request",
                                              "internal_error"));
    if (answer_ == Answer::stream && !finish_requested_) close_now();
  }

 private:
  enum class Phase { reading, answering, closing, closed };
  enum class Answer { none, complete, stream };

  bool current(uint64_t exchange) const {
    return phase_ == Phase::answering && exchange == exchange_;
  }

  template <typename Body>
  void set_headers(http::response<Body>& h, const std::string& content_type,
                   const std::vector<std::pair<std::string, std::string>>& extra) {
    h.version(version_);
    h.set(http::field::server, kServerName);
    h.set(http::field::content_type, content_type);
    for (const auto& [name, value] : extra) h.set(name, value);
    h.keep_alive(keep_alive_ && !draining_);
  }

  // ---- reading a request ----
  void read_request() {
    if (phase_ == Phase::closed) return;
    if (draining_) return close_now();
    phase_ = Phase::reading;
    parser_.emplace();
    parser_->body_limit(server_.options.body_limit);
    parser_->header_limit(std::uint32_t(server_.options.header_limit));
    stream_.expires_after(server_.options.read_timeout);
    http::async_read_header(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  void on_header(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    const auto expect = parser_->get()[http::field::expect];
    if (!beast::iequals(expect, "100-continue")) return read_body();
    // The client waits for a go-ahead before sending the body (curl does for large bodies).
    auto go_ahead = std::make_shared<http::response<http::empty_body>>(http::status::continue_, 11);
    http::async_write(stream_, *go_ahead,
                      [self = shared_from_this(), go_ahead](beast::error_code ec, size_t) {
                        if (ec) return self->close_now();
                        self->read_body();
                      });
  }

  void read_body() {
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       if (ec) return self->on_read_error(ec);
                       self->dispatch();
                     });
  }

  void on_read_error(beast::error_code ec) {
    if (ec == http::error::body_limit)
      return refuse(413, concat("the request body exceeds the limit of ",
                                server_.options.body_limit, " bytes"));
    if (ec == http::error::header_limit)
      return refuse(431, concat("the request headers exceed the limit of ",
                                server_.options.header_limit, " bytes"));
    // The client closed, reset or timed out: nobody is left to answer.
    if (ec == http::error::end_of_stream || ec == http::error::partial_message ||
        ec == beast::error::timeout || ec == net::error::operation_aborted ||
        ec == net::error::eof || ec == net::error::connection_reset || phase_ == Phase::closed)
      return close_now();
    refuse(400, "malformed HTTP request (" + ec.message() + ")");
  }

  // An error answered outside any route; the connection closes after it.
  void refuse(int status, const std::string& message) {
    keep_alive_ = false;
    begin_exchange();
    respond(exchange_, error_response(status, message, "invalid_request_error"));
  }

  void begin_exchange() {
    phase_ = Phase::answering;
    ++exchange_;
    answer_ = Answer::none;
    finish_requested_ = false;
    self_ = shared_from_this();  // alive until the answer is out, whoever holds the stream
    stream_.expires_never();
    watch_client();
  }

  // ---- routing ----
  void dispatch() {
    http::request<http::string_body> req = parser_->release();
    parser_.reset();
    keep_alive_ = req.keep_alive();
    version_ = req.version() == 10 ? 10 : 11;
    HttpRequest request;
    request.method = text(req.method_string());
    const std::string target = text(req.target());
    const size_t q = target.find('?');
    request.path = target.substr(0, q);
    if (q != std::string::npos) request.query = target.substr(q + 1);
    for (const auto& f : req) request.headers.emplace_back(text(f.name_string()), text(f.value()));
    request.body = std::move(req.body());

    begin_exchange();
    auto stream = std::make_shared<ResponseStream>(weak_from_this(), exchange_);
    current_stream_ = stream;
    const auto route = find_route(request, *stream);
    if (!route) return;
    try {
      route->handler(request, stream);
    } catch (const ProtocolError& e) {
      stream->respond(error_response(e));
    } catch (const std::exception& e) {
      stream->respond(error_response(500, e.what(), "internal_error"));
    } catch (...) {
      stream->respond(error_response(500, "the handler failed", "internal_error"));
    }
  }

  // The route for `request`, or nullptr after answering 404, 405 or 401.
  const HttpServer::State::Route* find_route(const HttpRequest& request, ResponseStream& stream) {
    const auto path = server_.routes.find(request.path);
    if (path == server_.routes.end()) {
      stream.respond(error_response(404,
                                    concat("no such route: ", request.method, " ", request.path),
                                    "invalid_request_error", "", "not_found"));
      return nullptr;
    }
    const auto method = path->second.find(request.method);
    if (method == path->second.end()) {
      std::string allow;
      for (const auto& [name, route] : path->second) allow += (allow.empty() ? "" : ", ") + name;
      HttpResponse r = error_response(
          405, concat(request.path, " does not take ", request.method, ": use ", allow),
          "invalid_request_error", "", "method_not_allowed");
      r.headers.emplace_back("Allow", allow);
      stream.respond(std::move(r));
      return nullptr;
    }
    const std::string& key = server_.options.api_key;
    if (method->second.auth == Auth::required && !key.empty()) {
      const std::string authorization = request.header("Authorization");
      const auto token = bearer_token(authorization);
      if (!token || !key_matches(*token, key)) {
        HttpResponse r = error_response(
            401,
            token ? "incorrect API key" : "an API key is needed: send 'Authorization: Bearer KEY'",
            "invalid_request_error", "", "invalid_api_key");
        r.headers.emplace_back("WWW-Authenticate", "Bearer");
        stream.respond(std::move(r));
        return nullptr;
      }
    }
    return &method->second;
  }

  // ---- watching the client while its answer is pending ----
  void watch_client() {
    if (reading_ahead_ || buffer_.size() >= kReadAheadLimit) return;
    reading_ahead_ = true;
    stream_.async_read_some(buffer_.prepare(kReadChunk),
                            [self = shared_from_this()](beast::error_code ec, size_t n) {
                              self->on_read_ahead(ec, n);
                            });
  }

  void on_read_ahead(beast::error_code ec, size_t n) {
    reading_ahead_ = false;
    if (!ec) buffer_.commit(n);
    switch (phase_) {
      case Phase::closed:
        return;
      case Phase::closing:  // drop what comes until the client closes or the linger time ends
        if (ec) return close_now();
        buffer_.consume(buffer_.size());
        return watch_client();
      case Phase::reading:  // cancelled by end_exchange to read the next request
        if (ec && ec != net::error::operation_aborted) return close_now();
        return read_request();
      case Phase::answering:
        if (ec) return close_now();  // the client has gone: its stream reports closed()
        return watch_client();
    }
  }

  // ---- writing a stream ----
  void pump() {
    if (writing_ || phase_ != Phase::answering) return;
    if (!backlog_.empty()) {
      in_flight_.clear();
      for (std::string& piece : backlog_) in_flight_ += piece;
      backlog_.clear();
      backlog_bytes_ = 0;
      writing_ = true;
      stream_.expires_after(server_.options.write_timeout);
      const auto on_written = [self = shared_from_this()](beast::error_code ec, size_t) {
        self->on_stream_written(ec);
      };
      if (chunked_)
        net::async_write(stream_, http::make_chunk(net::buffer(in_flight_)), on_written);
      else
        net::async_write(stream_, net::buffer(in_flight_), on_written);
    } else if (finish_requested_ && !chunked_) {
      end_exchange();
    } else if (finish_requested_) {
      writing_ = true;
      stream_.expires_after(server_.options.write_timeout);
      net::async_write(stream_, http::make_chunk_last(),
                       [self = shared_from_this()](beast::error_code ec, size_t) {
                         if (ec) return self->close_now();
                         self->end_exchange();
                       });
    }
  }

  void on_stream_written(beast::error_code ec) {
    writing_ = false;
    if (ec) return close_now();
    pump();
  }

  // ---- ending ----
  void end_exchange() {
    writing_ = false;
    if (auto stream = current_stream_.lock()) stream->mark_ended();
    current_stream_.reset();
    header_writer_.reset();
    stream_header_ = {};
    in_flight_.clear();
    auto self = std::move(self_);
    if (!keep_alive_ || draining_) return close_gracefully();
    phase_ = Phase::reading;
    if (reading_ahead_)
      stream_.cancel();  // on_read_ahead then reads the next request
    else
      read_request();
  }

  // Stops sending, then drops what the client still sends for a short while before closing.
  void close_gracefully() {
    phase_ = Phase::closing;
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    linger_timer_.expires_after(kLingerTime);
    linger_timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec) self->close_now();
    });
    buffer_.consume(buffer_.size());
    watch_client();
  }

  void close_now() {
    if (phase_ == Phase::closed) return;
    const auto keep = shared_from_this();
    phase_ = Phase::closed;
    linger_timer_.cancel();
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
    if (auto stream = current_stream_.lock()) stream->mark_closed();
    current_stream_.reset();
    self_.reset();
    server_.connection_closed();
  }

  HttpServer::State& server_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  net::steady_timer linger_timer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  Phase phase_ = Phase::reading;
  bool keep_alive_ = true;
  unsigned version_ = 11;  // of the request: 10 or 11
  bool draining_ = false;
  bool reading_ahead_ = false;  // a read watching the client is pending

  // The exchange in flight: one request and its answer.
  uint64_t exchange_ = 0;
  Answer answer_ = Answer::none;
  std::weak_ptr<ResponseStream> current_stream_;
  std::shared_ptr<HttpConnection> self_;

  // A streamed answer: its header, then chunks of what write() queued, then the last chunk.
  http::response<http::empty_body> stream_header_;
  std::optional<http::response_serializer<http::empty_body>> header_writer_;
  std::deque<std::string> backlog_;
  size_t backlog_bytes_ = 0;
  std::string in_flight_;  // the chunk being written
  bool writing_ = false;
  bool finish_requested_ = false;
  bool chunked_ = true;
};

// ---- requests and responses -------------------------------------------------------------------

std::string HttpRequest::header(std::string_view name) const {
  for (const auto& [n, v] : headers)
    if (iequals(n, name)) return v;
  return {};
}

HttpResponse error_response(const ProtocolError& e) {
  return HttpResponse{e.status(), "application/json", e.json(), {}};
}

HttpResponse error_response(int status, std::string_view message, std::string_view type,
                            std::string_view param, std::string_view code) {
  return HttpResponse{status, "application/json", encode_error(message, type, param, code), {}};
}

// ---- ResponseStream ---------------------------------------------------------------------------

ResponseStream::ResponseStream(std::weak_ptr<HttpConnection> connection, uint64_t exchange)
    : connection_(std::move(connection)), exchange_(exchange) {}

ResponseStream::~ResponseStream() {
  if (finished_.load() || closed_.load()) return;
  const uint64_t exchange = exchange_;
  if (auto c = connection_.lock())
    net::post(c->executor(), [c, exchange] { c->abandoned(exchange); });
}

void ResponseStream::post(std::function<void(HttpConnection&)> action) {
  if (auto c = connection_.lock())
    net::post(c->executor(), [c, action = std::move(action)] { action(*c); });
}

void ResponseStream::respond(HttpResponse response) {
  if (answered_.exchange(true)) return;
  finished_ = true;
  post([exchange = exchange_, r = std::move(response)](HttpConnection& c) mutable {
    c.respond(exchange, std::move(r));
  });
}

void ResponseStream::begin_stream(int status, std::string content_type,
                                  std::vector<std::pair<std::string, std::string>> headers) {
  if (answered_.exchange(true)) return;
  post([exchange = exchange_, status, type = std::move(content_type), headers = std::move(headers)](
           HttpConnection& c) { c.begin_stream(exchange, status, type, headers); });
}

bool ResponseStream::write(std::string bytes) {
  if (closed_.load() || finished_.load()) return false;
  begin_stream();
  post([exchange = exchange_, b = std::move(bytes)](HttpConnection& c) mutable {
    c.write(exchange, std::move(b));
  });
  return true;
}

void ResponseStream::finish() {
  begin_stream();
  if (finished_.exchange(true)) return;
  post([exchange = exchange_](HttpConnection& c) { c.finish(exchange); });
}

void ResponseStream::on_close(std::function<void()> callback) {
  {
    std::lock_guard lock(mutex_);
    if (ended_) return;
    if (!closed_.load()) {
      on_close_ = std::move(callback);
      return;
    }
  }
  callback();
}

void ResponseStream::mark_closed() {
  std::function<void()> callback;
  {
    std::lock_guard lock(mutex_);
    if (ended_ || closed_.load()) return;
    closed_ = true;
    callback = std::move(on_close_);
  }
  if (callback) callback();
}

void ResponseStream::mark_ended() {
  std::lock_guard lock(mutex_);
  ended_ = true;
  on_close_ = nullptr;
}

// ---- HttpServer -------------------------------------------------------------------------------

void HttpServer::State::accept() {
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
    if (ec) {  // out of descriptors, say: try again shortly rather than spin
      accept_retry.expires_after(std::chrono::milliseconds(50));
      accept_retry.async_wait([this](beast::error_code e) {
        if (!e) accept();
      });
      return;
    }
    std::shared_ptr<HttpConnection> connection;
    {
      std::lock_guard lock(mutex);
      if (stopping) return;  // accepted as the acceptor closed: dropped unread
      connection = std::make_shared<HttpConnection>(std::move(socket), *this);
      ++open;
      std::erase_if(connections, [](const auto& c) { return c.expired(); });
      connections.push_back(connection);
    }
    connection->start();
    accept();
  });
}

HttpServer::HttpServer(HttpServerOptions options)
    : state_(std::make_unique<State>(std::move(options))) {
  ORIGAMI_CHECK(state_->options.threads >= 1, "HttpServer: threads must be at least 1, got ",
                state_->options.threads);
}

HttpServer::~HttpServer() {
  stop();
}

void HttpServer::route(const std::string& method, const std::string& path, Handler handler,
                       Auth auth) {
  ORIGAMI_CHECK(!state_->started, "HttpServer::route: add routes before start()");
  state_->routes[path][method] = State::Route{std::move(handler), auth};
}

void HttpServer::start() {
  State& s = *state_;
  ORIGAMI_CHECK(!s.started, "HttpServer::start: already started");
  const std::string where = concat(s.options.host, ":", s.options.port);
  beast::error_code ec;
  tcp::resolver resolver(s.ioc);
  const auto endpoints =
      resolver.resolve(s.options.host, std::to_string(s.options.port),
                       tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  ORIGAMI_CHECK(!ec && !endpoints.empty(), "cannot listen on ", where, ": ", ec.message(),
                " (give an IP address or a resolvable host name)");
  const tcp::endpoint endpoint = endpoints.begin()->endpoint();
  if (!s.acceptor.open(endpoint.protocol(), ec))
    s.acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) s.acceptor.bind(endpoint, ec);
  if (!ec) s.acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    beast::error_code ignored;
    s.acceptor.close(ignored);
    ORIGAMI_FAIL("cannot listen on ", where, ": ", ec.message(),
                 " (choose another port, or port 0 for any free one)");
  }
  s.port = s.acceptor.local_endpoint().port();
  s.started = true;
  s.work.emplace(s.ioc.get_executor());
  net::post(s.acceptor.get_executor(), [&s] { s.accept(); });
  for (int i = 0; i < s.options.threads; ++i) s.threads.emplace_back([&s] { s.ioc.run(); });
}

uint16_t HttpServer::port() const {
  return state_->port;
}

size_t HttpServer::connections() const {
  std::lock_guard lock(state_->mutex);
  return state_->open;
}

void HttpServer::stop(std::chrono::milliseconds drain) {
  State& s = *state_;
  {
    std::lock_guard lock(s.mutex);
    if (!s.started || s.stopping) return;
    s.stopping = true;
  }
  net::post(s.acceptor.get_executor(), [&s] {
    beast::error_code ignored;
    s.acceptor.close(ignored);
    s.accept_retry.cancel();
  });
  const auto each_connection = [&s](auto action) {
    std::vector<std::shared_ptr<HttpConnection>> alive;
    {
      std::lock_guard lock(s.mutex);
      for (const auto& weak : s.connections)
        if (auto c = weak.lock()) alive.push_back(std::move(c));
    }
    for (auto& c : alive) net::post(c->executor(), [c, action] { action(*c); });
  };
  each_connection([](HttpConnection& c) { c.drain(); });
  {
    std::unique_lock lock(s.mutex);
    s.changed.wait_for(lock, drain, [&s] { return s.open == 0; });
  }
  each_connection([](HttpConnection& c) { c.force_close(); });
  {
    std::unique_lock lock(s.mutex);
    s.changed.wait_for(lock, std::chrono::seconds(5), [&s] { return s.open == 0; });
  }
  s.work.reset();
  s.ioc.stop();
  for (std::thread& t : s.threads) t.join();
  s.threads.clear();
  std::lock_guard lock(s.mutex);
  s.stopped = true;
}

}  // namespace origami::serve
