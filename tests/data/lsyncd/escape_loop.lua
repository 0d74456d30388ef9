-- An endless loop that also swallows errors with pcall.
while true do
    pcall(function() while true do end end)
end
